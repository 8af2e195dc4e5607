/**
 * Pure formatting and parsing helpers (no DOM, no Jupyter imports: unit-tested in node).
 */

const NBSP = '\u00a0';

/** Human-readable size in binary units: 1536 -> "1.5 KiB" (a no-break space before the unit). */
export function formatBytes(bytes: number | null | undefined): string {
  if (typeof bytes !== 'number' || !isFinite(bytes) || bytes < 0) {
    return '—';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1;
  return `${value.toFixed(digits)}${NBSP}${units[unit]}`;
}

/** Transfer rate: 1572864 -> "1.5 MiB/s"; missing or negative -> "—". */
export function formatRate(bytesPerSecond: number | null | undefined): string {
  const size = formatBytes(bytesPerSecond);
  return size === '—' ? size : `${size}/s`;
}

/**
 * A duration in seconds, short: 42 -> "42 s", 200 -> "3 min 20 s", 3900 -> "1 h 5 min".
 * Missing, negative or infinite -> "—".
 */
export function formatDuration(seconds: number | null | undefined): string {
  if (typeof seconds !== 'number' || !isFinite(seconds) || seconds < 0) {
    return '—';
  }
  const s = Math.round(seconds);
  if (s < 60) {
    return `${s}${NBSP}s`;
  }
  if (s < 3600) {
    const m = Math.floor(s / 60);
    const rest = s % 60;
    return rest ? `${m}${NBSP}min ${rest}${NBSP}s` : `${m}${NBSP}min`;
  }
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return m ? `${h}${NBSP}h ${m}${NBSP}min` : `${h}${NBSP}h`;
}

/** Time left of a download: "3 min 20 s left"; unknown -> "" (nothing to show). */
export function formatEta(seconds: number | null | undefined): string {
  const text = formatDuration(seconds);
  return text === '—' ? '' : `${text} left`;
}

/** Milliseconds, short: 19.3 -> "19 ms", 1530 -> "1.53 s". */
export function formatMs(ms: number | null | undefined): string {
  if (typeof ms !== 'number' || !isFinite(ms) || ms < 0) {
    return '—';
  }
  if (ms < 1000) {
    return `${Math.round(ms)}${NBSP}ms`;
  }
  return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)}${NBSP}s`;
}

/** Fraction done in percent (0..100, rounded down), or null when the total is unknown. */
export function percent(
  done: number | null | undefined,
  total: number | null | undefined
): number | null {
  if (typeof done !== 'number' || typeof total !== 'number' || !(total > 0)) {
    return null;
  }
  return Math.max(0, Math.min(100, Math.floor((done / total) * 100)));
}

/** Large counts: 1234 -> "1.2k", 2500000 -> "2.5M". */
export function formatCount(n: number | null | undefined): string {
  if (typeof n !== 'number' || !isFinite(n)) {
    return '—';
  }
  if (n < 1000) {
    return String(n);
  }
  if (n < 1e6) {
    return `${(n / 1e3).toFixed(n < 1e4 ? 1 : 0)}k`;
  }
  return `${(n / 1e6).toFixed(n < 1e7 ? 1 : 0)}M`;
}

/**
 * Keep-alive (seconds, Ollama semantics) for people: negative -> "forever",
 * 0 -> "unload when idle", 300 -> "5 min".
 */
export function formatKeepAlive(seconds: number | null | undefined): string {
  if (typeof seconds !== 'number' || isNaN(seconds)) {
    return 'server default';
  }
  if (seconds < 0) {
    return 'forever';
  }
  if (seconds === 0) {
    return 'unload when idle';
  }
  return formatDuration(seconds);
}

/**
 * Parse a keep-alive as typed by a person or in the settings: "" -> undefined (the
 * server's default), "300" / "300s" / "5m" / "1h" / "1.5h" -> seconds, "-1" / "forever" /
 * "never" -> -1. Throws on anything else.
 */
export function parseKeepAlive(
  value: string | number | null | undefined
): number | undefined {
  if (value === null || value === undefined) {
    return undefined;
  }
  if (typeof value === 'number') {
    if (!isFinite(value)) {
      throw new Error(`invalid keep-alive: ${value}`);
    }
    return value < 0 ? -1 : value;
  }
  const text = value.trim().toLowerCase();
  if (!text) {
    return undefined;
  }
  if (
    text === 'forever' ||
    text === 'never' ||
    text === 'inf' ||
    text === 'infinite'
  ) {
    return -1;
  }
  const match =
    /^(-?\d+(?:\.\d+)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?)?$/.exec(
      text
    );
  if (!match) {
    throw new Error(
      `invalid keep-alive "${value}": use seconds, "5m", "1h" or "forever"`
    );
  }
  const amount = parseFloat(match[1]);
  if (amount < 0) {
    return -1;
  }
  const unit = (match[2] || 's')[0];
  return amount * (unit === 'h' ? 3600 : unit === 'm' ? 60 : 1);
}

function parseTime(iso: string | null | undefined): number | null {
  if (!iso) {
    return null;
  }
  const t = Date.parse(iso);
  return isNaN(t) ? null : t;
}

/** A timestamp relative to now: "in 4 min", "3 min ago", "just now". */
export function formatRelative(
  iso: string | null | undefined,
  now: number = Date.now()
): string {
  const t = parseTime(iso);
  if (t === null) {
    return '—';
  }
  const delta = (t - now) / 1000;
  if (Math.abs(delta) < 5) {
    return 'just now';
  }
  const text = formatDuration(Math.abs(delta)).replace(/ \d+\u00a0s$/, '');
  return delta > 0 ? `in ${text}` : `${text} ago`;
}

/** Local wall-clock time of an ISO timestamp ("14:03:27"), or "—". */
export function formatClock(iso: string | null | undefined): string {
  const t = parseTime(iso);
  return t === null ? '—' : new Date(t).toLocaleTimeString();
}

/** Parameter count: 1.5e9 -> "1.5B", 135e6 -> "135M", 106816 -> "107K"; strings ("7B") as they are. */
export function formatParameters(
  value: number | string | null | undefined
): string {
  if (typeof value === 'string') {
    return value;
  }
  if (typeof value !== 'number' || !isFinite(value)) {
    return '';
  }
  if (value >= 1e9) {
    return `${(value / 1e9).toFixed(value >= 1e10 ? 0 : 1)}B`;
  }
  if (value >= 1e6) {
    return `${(value / 1e6).toFixed(0)}M`;
  }
  if (value >= 1e3) {
    return `${(value / 1e3).toFixed(0)}K`;
  }
  return String(value);
}

/** Quantization as the server describes it (`{bits, group_size}`, or a string): "4-bit". */
export function formatQuantization(q: unknown, dtype?: string | null): string {
  if (typeof q === 'string') {
    return q;
  }
  if (q && typeof q === 'object' && typeof (q as any).bits === 'number') {
    const { bits, group_size } = q as {
      bits: number;
      group_size?: number | null;
    };
    return group_size ? `${bits}-bit (group ${group_size})` : `${bits}-bit`;
  }
  return dtype ? String(dtype) : '';
}

/**
 * A count with its noun, singular or plural: (1, 'user') -> "1 user", (3, 'user') -> "3 users";
 * irregular plurals are passed in.
 */
export function plural(
  n: number,
  singular: string,
  pluralForm = `${singular}s`
): string {
  return `${formatCount(n)} ${n === 1 ? singular : pluralForm}`;
}
