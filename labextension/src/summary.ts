/**
 * One-line summaries of the shared state (status bar). Pure: unit-tested in node.
 */
import { formatBytes, plural } from './format';
import type { IServiceState } from './service';

/** The item's text and tooltip for a service state (pure, unit-tested). */
export function statusBarText(state: IServiceState): {
  text: string;
  title: string;
} {
  const { status, pool, error } = state;
  if (error && (error.isForbidden || !status)) {
    if (error.isForbidden && error.reason === 'pending') {
      return { text: 'MLX: pending approval', title: error.message };
    }
    if (error.isNetworkError) {
      return { text: 'MLX: offline', title: error.message };
    }
    return { text: 'MLX: unavailable', title: error.message };
  }
  if (!status && !pool) {
    return { text: 'MLX', title: 'MLX Manager: loading…' };
  }
  const count = pool?.models.length ?? status?.pool?.loaded_models ?? 0;
  const used = pool?.memory_used_bytes ?? status?.pool?.memory_used_bytes ?? 0;
  const budget = pool?.limits?.max_memory_bytes ?? status?.memory?.budget_bytes;
  const loading = pool?.loading?.length ?? 0;
  const models = plural(count, 'model');
  const text = `MLX: ${models} · ${formatBytes(used)}${loading ? ` · loading ${loading}` : ''}`;
  const names = (pool?.models ?? []).map(m => m.model).join(', ');
  const title =
    `${models} loaded${names ? ` (${names})` : ''}, ${formatBytes(used)}` +
    (typeof budget === 'number' ? ` of ${formatBytes(budget)} budget` : '') +
    '. Click to open the MLX pool.';
  return { text, title };
}
