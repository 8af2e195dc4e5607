import { formatTick, niceTicks, timeTicks, valueScale } from '../chart';

describe('niceTicks', () => {
  it('runs from 0 to a round top at or above the maximum', () => {
    expect(niceTicks(44)).toEqual([0, 20, 40, 60]);
    expect(niceTicks(100)).toEqual([0, 25, 50, 75, 100]);
    expect(niceTicks(3.5)).toEqual([0, 1, 2, 3, 4]);
    expect(niceTicks(223_000)).toEqual([0, 100_000, 200_000, 300_000]);
    expect(niceTicks(0.3)).toEqual([0, 0.1, 0.2, 0.3]);
  });

  it('has a scale for nothing at all', () => {
    expect(niceTicks(0)).toEqual([0, 1]);
    expect(niceTicks(NaN)).toEqual([0, 1]);
  });
});

describe('timeTicks', () => {
  const start = new Date(2026, 0, 1, 14, 3, 20).getTime();

  it('puts ticks on round clock times inside the span', () => {
    const ticks = timeTicks(start, start + 20 * 60_000, 4);
    expect(ticks.map(t => formatTick(t, false))).toEqual([
      '14:05',
      '14:10',
      '14:15',
      '14:20'
    ]);
    for (const t of ticks) {
      expect(t).toBeGreaterThanOrEqual(start);
      expect(t).toBeLessThanOrEqual(start + 20 * 60_000);
    }
  });

  it('shows seconds for spans under a few minutes', () => {
    const ticks = timeTicks(start, start + 60_000, 4);
    expect(ticks.map(t => formatTick(t, true))).toEqual([
      '14:03:30',
      '14:03:45',
      '14:04:00',
      '14:04:15'
    ]);
  });

  it('keeps at most the count asked for, and the start of an empty span', () => {
    expect(
      timeTicks(start, start + 26 * 3600_000, 3).length
    ).toBeLessThanOrEqual(3);
    expect(timeTicks(start, start)).toEqual([start]);
  });
});

describe('valueScale', () => {
  it("puts 0 on the plot's bottom edge and the last tick on its top edge", () => {
    const [width, height, left, right, top, bottom] = [300, 132, 40, 8, 10, 22];
    const box = { width, height, left, right, top, bottom };
    const scale = valueScale(box, [0, 20, 40, 60]);
    expect(scale.plotWidth).toBe(252);
    expect(scale.plotHeight).toBe(100);
    expect(scale.y(0)).toBe(110);
    expect(scale.y(60)).toBe(10);
    expect(scale.y(30)).toBe(60);
  });
});
