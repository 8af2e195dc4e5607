/**
 * Before Load: how much memory a model needs and whether it fits the pool's budget now, after
 * trimming prompt caches, or only by unloading (which) models — the pool's own rule
 * (`pool/pool.py`, `_make_room`): trim prompt caches first, then evict idle unpinned models,
 * least recently used first. No DOM, no Jupyter imports (unit-tested in node).
 */
import { ILocalModel, IPool } from './api';
import { formatBytes } from './format';

/** The pool's estimate: weights × this + the runner's overhead (`pool.ESTIMATE_FACTOR`). */
export const ESTIMATE_FACTOR = 1.2;
/** The pool's smallest runner overhead (`pool.RUNNER_OVERHEAD_BYTES`). */
export const RUNNER_OVERHEAD_BYTES = 200 * 1024 ** 2;

/**
 * Bytes a model will take once loaded: the server's `memory_estimate_bytes` when it sends one,
 * else the pool's formula on the model's size on disk; null when unknown.
 */
export function memoryEstimate(
  model: Pick<ILocalModel, 'size_bytes'> & { memory_estimate_bytes?: unknown }
): number | null {
  if (
    typeof model.memory_estimate_bytes === 'number' &&
    model.memory_estimate_bytes > 0
  ) {
    return model.memory_estimate_bytes;
  }
  if (typeof model.size_bytes === 'number' && model.size_bytes > 0) {
    return (
      Math.round(model.size_bytes * ESTIMATE_FACTOR) + RUNNER_OVERHEAD_BYTES
    );
  }
  return null;
}

export type Fit =
  | { kind: 'unknown' }
  /** Fits now; `free` is what the budget has left before it. */
  | { kind: 'fits'; needed: number; free: number; budget: number }
  /** Fits once the loaded models' prompt caches are trimmed (nothing unloaded). */
  | { kind: 'trims'; needed: number; budget: number }
  /** Fits by unloading these idle models (least recently used first). */
  | { kind: 'evicts'; needed: number; budget: number; evicts: string[] }
  /** More than the whole budget: the server refuses it. */
  | { kind: 'too-big'; needed: number; budget: number }
  /** No room: the models that would have to go are pinned or busy. */
  | { kind: 'no-room'; needed: number; budget: number };

/** Whether `needed` bytes fit the pool now, and what the pool would do to make room. */
export function fitInPool(needed: number | null, pool: IPool | null): Fit {
  const budget = pool?.limits?.max_memory_bytes;
  if (needed === null || !pool || typeof budget !== 'number' || budget <= 0) {
    return { kind: 'unknown' };
  }
  if (needed > budget) {
    return { kind: 'too-big', needed, budget };
  }
  const models = pool.models ?? [];
  const maxModels = pool.limits?.max_loaded_models ?? Infinity;
  let used =
    pool.memory_used_bytes ??
    models.reduce((sum, m) => sum + (m.memory_bytes || 0), 0);
  let count = models.length;
  const fits = () => count < maxModels && used + needed <= budget;
  if (fits()) {
    return { kind: 'fits', needed, free: budget - used, budget };
  }
  const caches = models.reduce(
    (sum, m) => sum + (m.prompt_cache_bytes || 0),
    0
  );
  if (count < maxModels && caches > 0) {
    used -= caches;
    if (fits()) {
      return { kind: 'trims', needed, budget };
    }
  }
  const idle = models
    .filter(m => !m.pinned && !m.in_flight && m.status !== 'busy')
    .sort((a, b) => time(a.last_used) - time(b.last_used));
  const evicts: string[] = [];
  for (const victim of idle) {
    if (fits()) {
      break;
    }
    used -=
      (victim.memory_bytes || 0) -
      (caches > 0 ? victim.prompt_cache_bytes || 0 : 0);
    count -= 1;
    evicts.push(victim.model);
  }
  return fits()
    ? { kind: 'evicts', needed, budget, evicts }
    : { kind: 'no-room', needed, budget };
}

function time(iso: string | null | undefined): number {
  const t = iso ? Date.parse(iso) : NaN;
  return isNaN(t) ? 0 : t;
}

/** What the panel says about a fit, and how worried it looks. */
export function describeFit(fit: Fit): {
  text: string;
  level: 'ok' | 'warn' | 'error';
} {
  switch (fit.kind) {
    case 'unknown':
      return { text: '', level: 'ok' };
    case 'fits':
      return {
        text: `needs ≈ ${formatBytes(fit.needed)} · fits (${formatBytes(fit.free)} free of ${formatBytes(fit.budget)})`,
        level: 'ok'
      };
    case 'trims':
      return {
        text: `needs ≈ ${formatBytes(fit.needed)} · fits after trimming prompt caches`,
        level: 'ok'
      };
    case 'evicts':
      return {
        text: `needs ≈ ${formatBytes(fit.needed)} · would unload ${fit.evicts.join(', ')}`,
        level: 'warn'
      };
    case 'too-big':
      return {
        text: `needs ≈ ${formatBytes(fit.needed)}, more than the whole budget (${formatBytes(fit.budget)})`,
        level: 'error'
      };
    case 'no-room':
      return {
        text: `needs ≈ ${formatBytes(fit.needed)} · no room now: the loaded models are pinned or busy`,
        level: 'error'
      };
  }
}
