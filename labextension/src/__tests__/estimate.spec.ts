import { IPool, IPoolModel } from '../api';
import {
  describeFit,
  ESTIMATE_FACTOR,
  fitInPool,
  memoryEstimate,
  RUNNER_OVERHEAD_BYTES
} from '../estimate';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

function loaded(
  model: string,
  mib: number,
  extra: Partial<IPoolModel> = {}
): IPoolModel {
  return {
    model,
    status: 'loaded',
    pinned: false,
    keep_alive: 300,
    expires_at: null,
    memory_bytes: mib * MiB,
    ...extra
  };
}

function pool(models: IPoolModel[], budgetGiB = 1, maxModels = 3): IPool {
  return {
    models,
    limits: { max_memory_bytes: budgetGiB * GiB, max_loaded_models: maxModels },
    memory_used_bytes: models.reduce((n, m) => n + m.memory_bytes, 0)
  };
}

describe('memoryEstimate', () => {
  it("uses the server's estimate, else the pool's formula on the size", () => {
    expect(
      memoryEstimate({ size_bytes: 100 * MiB, memory_estimate_bytes: 7 })
    ).toBe(7);
    expect(memoryEstimate({ size_bytes: 100 * MiB })).toBe(
      Math.round(100 * MiB * ESTIMATE_FACTOR) + RUNNER_OVERHEAD_BYTES
    );
    expect(memoryEstimate({ size_bytes: null })).toBeNull();
    expect(memoryEstimate({})).toBeNull();
  });
});

describe('fitInPool', () => {
  it('fits now when the budget and a model slot are free', () => {
    const fit = fitInPool(300 * MiB, pool([loaded('a', 200)]));
    expect(fit).toEqual({
      kind: 'fits',
      needed: 300 * MiB,
      free: GiB - 200 * MiB,
      budget: GiB
    });
    expect(describeFit(fit).text).toBe(
      'needs ≈ 300\u00a0MiB · fits (824\u00a0MiB free of 1.0\u00a0GiB)'
    );
    expect(describeFit(fit).level).toBe('ok');
  });

  it('unloads the least recently used idle models, never pinned or busy ones', () => {
    const models = [
      loaded('pinned', 300, {
        pinned: true,
        last_used: '2026-01-01T00:00:00Z'
      }),
      loaded('busy', 300, { in_flight: 1, last_used: '2026-01-01T00:00:01Z' }),
      loaded('old', 200, { last_used: '2026-01-01T00:00:02Z' }),
      loaded('new', 200, { last_used: '2026-01-01T00:10:00Z' })
    ];
    // 1,000 MiB of 1,024 in use.
    const fit = fitInPool(200 * MiB, pool(models, 1, 10));
    expect(fit).toMatchObject({ kind: 'evicts', evicts: ['old'] });
    expect(describeFit(fit)).toEqual({
      text: 'needs ≈ 200\u00a0MiB · would unload old',
      level: 'warn'
    });
    expect(fitInPool(400 * MiB, pool(models, 1, 10))).toMatchObject({
      kind: 'evicts',
      evicts: ['old', 'new']
    });
    // Only the pinned and the busy model left to make room: no room.
    expect(fitInPool(500 * MiB, pool(models, 1, 10)).kind).toBe('no-room');
  });

  it('frees a model slot when the count limit is reached', () => {
    const models = [
      loaded('a', 10, { last_used: '2026-01-01T00:00:05Z' }),
      loaded('b', 10, { last_used: '2026-01-01T00:00:01Z' })
    ];
    expect(fitInPool(10 * MiB, pool(models, 1, 2))).toMatchObject({
      kind: 'evicts',
      evicts: ['b']
    });
  });

  it('trims prompt caches before unloading anything', () => {
    const models = [loaded('a', 800, { prompt_cache_bytes: 400 * MiB })];
    expect(fitInPool(400 * MiB, pool(models)).kind).toBe('trims');
  });

  it('says when a model is over the whole budget, or unknown', () => {
    const fit = fitInPool(2 * GiB, pool([]));
    expect(fit.kind).toBe('too-big');
    expect(describeFit(fit).level).toBe('error');
    expect(fitInPool(null, pool([])).kind).toBe('unknown');
    expect(fitInPool(MiB, null).kind).toBe('unknown');
    expect(describeFit({ kind: 'unknown' }).text).toBe('');
  });
});
