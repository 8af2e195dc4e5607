/**
 * Usage per day (`mlx/api/usage?group_by=day`) and token budgets (`mlx/api/budgets`): the API
 * calls and what Activity shows of them. No DOM (unit-tested in node).
 */
import { ServerConnection } from '@jupyterlab/services';

import { queryString, requestAPI } from './api';
/** Token counts in budgets are exact: "99,974", never "100k" when some are spent. */
export function exactCount(n: number): string {
  return Math.round(n).toLocaleString('en-US');
}

/** One row of `mlx/api/usage`: the requests of one key (here a UTC day, "2026-12-06"). */
export interface IUsageRow {
  key: string | null;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  cached_tokens?: number;
  audio_seconds?: number;
}

/** One budget window of a user: null limit = unlimited. */
export interface IBudgetWindow {
  limit: number | null;
  used: number;
  remaining: number | null;
  resets_at: string;
}

export type BudgetWindowName =
  'tokens_per_minute' | 'tokens_per_day' | 'tokens_per_month';

/** A user's budgets now (`GET mlx/api/budgets`; admins also get `users`, everyone's). */
export interface IBudgetStatus {
  user: string;
  groups?: string[];
  windows: Partial<Record<BudgetWindowName, IBudgetWindow>>;
  users?: IBudgetStatus[];
}

export async function getUsageByDay(
  since: string,
  settings?: ServerConnection.ISettings
): Promise<IUsageRow[]> {
  const reply = await requestAPI<{ rows: IUsageRow[] }>(
    'usage' + queryString({ group_by: 'day', since }),
    {},
    settings
  );
  return reply?.rows ?? [];
}

export function getBudgets(
  settings?: ServerConnection.ISettings
): Promise<IBudgetStatus> {
  return requestAPI<IBudgetStatus>('budgets', {}, settings);
}

/** "2026-12-06" of a time, in UTC (the server's days are UTC days). */
export function utcDay(time: number): string {
  return new Date(time).toISOString().slice(0, 10);
}

/** The first UTC day of the last `days` days up to `now` (for `since=`). */
export function firstDay(now: number, days: number): string {
  return utcDay(now - (days - 1) * 86_400_000);
}

export interface IUsageDay {
  day: string;
  requests: number;
  prompt: number;
  completion: number;
}

/** The last `days` UTC days up to `now`, oldest first, with zeros on days without requests. */
export function usageDays(
  rows: IUsageRow[],
  now: number,
  days = 14
): IUsageDay[] {
  const byDay = new Map(rows.filter(r => r.key).map(r => [r.key, r]));
  const out: IUsageDay[] = [];
  for (let i = days - 1; i >= 0; i--) {
    const day = utcDay(now - i * 86_400_000);
    const row = byDay.get(day);
    out.push({
      day,
      requests: row?.requests ?? 0,
      prompt: row?.prompt_tokens ?? 0,
      completion: row?.completion_tokens ?? 0
    });
  }
  return out;
}

export const WINDOWS: [BudgetWindowName, string][] = [
  ['tokens_per_minute', 'this minute'],
  ['tokens_per_day', 'today'],
  ['tokens_per_month', 'this month']
];

export interface IBudgetLine {
  window: BudgetWindowName;
  label: string;
  /** "12,000 of 50,000 tokens left" or "unlimited (3,200 used)". */
  text: string;
  /** Used / limit, 0..1; null when unlimited. */
  fraction: number | null;
  remaining: number | null;
  resetsAt: string;
}

/** What is left in each window, in words. */
export function budgetLines(status: IBudgetStatus): IBudgetLine[] {
  const lines: IBudgetLine[] = [];
  for (const [window, label] of WINDOWS) {
    const w = status.windows?.[window];
    if (!w) {
      continue;
    }
    const unlimited = w.limit === null || w.limit === undefined;
    lines.push({
      window,
      label,
      text: unlimited
        ? `unlimited (${exactCount(w.used)} used)`
        : `${exactCount(w.remaining ?? 0)} of ${exactCount(w.limit as number)} tokens left`,
      fraction: unlimited
        ? null
        : Math.min(1, w.used / Math.max(1, w.limit as number)),
      remaining: unlimited ? null : (w.remaining ?? 0),
      resetsAt: w.resets_at
    });
  }
  return lines;
}

/** Admins: everyone's budgets (own first, then by name); users: their own. */
export function budgetsToShow(status: IBudgetStatus): IBudgetStatus[] {
  if (!status.users?.length) {
    return [status];
  }
  const others = status.users
    .filter(u => u.user !== status.user)
    .sort((a, b) => a.user.localeCompare(b.user));
  return [status, ...others];
}
