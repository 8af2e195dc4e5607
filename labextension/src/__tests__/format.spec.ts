import {
  formatBytes,
  formatCount,
  formatDuration,
  formatEta,
  formatKeepAlive,
  formatMs,
  formatParameters,
  formatQuantization,
  formatRate,
  formatRelative,
  parseKeepAlive,
  percent
} from '../format';

/** The formatters put a no-break space before units; compare with plain spaces. */
const plain = (s: string) => s.replace(/\u00a0/g, ' ');

describe('formatBytes', () => {
  it.each([
    [0, '0\u00a0B'],
    [1023, '1023\u00a0B'],
    [1536, '1.5\u00a0KiB'],
    [25000000000, '23.3\u00a0GiB'],
    [undefined, '—'],
    [-1, '—']
  ])('%s -> %s', (bytes, expected) => {
    expect(formatBytes(bytes as number | undefined)).toBe(expected);
  });
});

describe('download progress formatting', () => {
  it('formats rates per second', () => {
    expect(plain(formatRate(1572864))).toBe('1.5 MiB/s');
    expect(formatRate(null)).toBe('—');
  });

  it.each([
    [0, '0 s'],
    [42.4, '42 s'],
    [60, '1 min'],
    [200, '3 min 20 s'],
    [3600, '1 h'],
    [3900, '1 h 5 min']
  ])('duration %s s -> %s', (s, expected) => {
    expect(plain(formatDuration(s))).toBe(expected);
  });

  it('gives an ETA only when it is known', () => {
    expect(plain(formatEta(200))).toBe('3 min 20 s left');
    expect(formatEta(null)).toBe('');
    expect(formatEta(Infinity)).toBe('');
    expect(formatEta(-5)).toBe('');
  });

  it('computes percentages only with a known total', () => {
    expect(percent(50, 200)).toBe(25);
    expect(percent(199, 200)).toBe(99);
    expect(percent(300, 200)).toBe(100);
    expect(percent(5, 0)).toBeNull();
    expect(percent(5, null)).toBeNull();
  });
});

describe('formatMs', () => {
  it.each([
    [19.3, '19 ms'],
    [1530, '1.53 s'],
    [12345, '12.3 s'],
    [null, '—']
  ])('%s -> %s', (ms, expected) => {
    expect(plain(formatMs(ms as number | null))).toBe(expected);
  });
});

describe('keep-alive', () => {
  it.each([
    [-1, 'forever'],
    [0, 'unload when idle'],
    [300, '5 min'],
    [3600, '1 h'],
    [undefined, 'server default']
  ])('formats %s as %s', (s, expected) => {
    expect(plain(formatKeepAlive(s as number | undefined))).toBe(expected);
  });

  it.each([
    ['', undefined],
    ['  ', undefined],
    [null, undefined],
    ['300', 300],
    ['30s', 30],
    ['5m', 300],
    ['5 min', 300],
    ['1h', 3600],
    ['1.5h', 5400],
    ['0', 0],
    ['-1', -1],
    ['-5m', -1],
    ['forever', -1],
    ['Never', -1],
    [120, 120],
    [-3, -1]
  ])('parses %p as %p', (text, expected) => {
    expect(parseKeepAlive(text as string)).toBe(expected);
  });

  it.each(['5 days', 'soon', '1m30', 'm5'])('rejects %p', text => {
    expect(() => parseKeepAlive(text)).toThrow(/invalid keep-alive/);
  });
});

describe('other formats', () => {
  it('formats relative times', () => {
    const now = Date.parse('2026-01-01T12:00:00Z');
    expect(plain(formatRelative('2026-01-01T12:04:10Z', now))).toBe('in 4 min');
    expect(plain(formatRelative('2026-01-01T11:57:00Z', now))).toBe(
      '3 min ago'
    );
    expect(formatRelative('2026-01-01T12:00:02Z', now)).toBe('just now');
    expect(formatRelative(null, now)).toBe('—');
    expect(formatRelative('not a date', now)).toBe('—');
  });

  it('formats counts and parameters', () => {
    expect(formatCount(999)).toBe('999');
    expect(formatCount(1234)).toBe('1.2k');
    expect(formatCount(2500000)).toBe('2.5M');
    expect(formatParameters(1.5e9)).toBe('1.5B');
    expect(formatParameters(135e6)).toBe('135M');
    expect(formatParameters(106816)).toBe('107K');
    expect(formatParameters('7B')).toBe('7B');
    expect(formatParameters(null)).toBe('');
  });
});

describe('formatQuantization', () => {
  it.each([
    [
      { bits: 4, group_size: 64, mode: 'affine' },
      undefined,
      '4-bit (group 64)'
    ],
    [{ bits: 8 }, undefined, '8-bit'],
    ['q4_k_m', undefined, 'q4_k_m'],
    [null, 'bfloat16', 'bfloat16'],
    [null, undefined, '']
  ])('%p (dtype %p) -> %p', (q, dtype, expected) => {
    expect(formatQuantization(q, dtype as string | undefined)).toBe(expected);
  });
});
