/**
 * Scales for the panel's charts: "nice" value ticks (1, 2, 5 × 10ⁿ), time ticks on round
 * clock steps, and the plot's value scale. No DOM (unit-tested in node).
 */

/** Ticks from 0 to a round maximum at or above `max`, about `count` of them. */
export function niceTicks(max: number, count = 4): number[] {
  if (!(max > 0) || !isFinite(max)) {
    return [0, 1];
  }
  const rough = max / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(rough));
  const step =
    [1, 2, 2.5, 5, 10].map(m => m * power).find(s => s >= rough) ?? 10 * power;
  const top = Math.ceil(max / step - 1e-9) * step;
  const ticks: number[] = [];
  for (let v = 0; v <= top + step / 2; v += step) {
    ticks.push(Number(v.toPrecision(12)));
  }
  return ticks;
}

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const STEPS = [
  10 * SECOND,
  15 * SECOND,
  30 * SECOND,
  MINUTE,
  2 * MINUTE,
  5 * MINUTE,
  10 * MINUTE,
  15 * MINUTE,
  30 * MINUTE,
  HOUR,
  2 * HOUR,
  3 * HOUR,
  6 * HOUR,
  12 * HOUR,
  24 * HOUR
];

/**
 * Times (ms since the epoch) on round steps of the local clock inside [start, end], at most
 * `count` of them (at least the two ends when no round step fits).
 */
export function timeTicks(start: number, end: number, count = 4): number[] {
  if (!(end > start)) {
    return [start];
  }
  const span = end - start;
  const step =
    STEPS.find(s => span / s <= count) ??
    Math.ceil(span / count / (24 * HOUR)) * 24 * HOUR;
  // Round on the local clock: the offset makes whole minutes/hours line up with the wall clock.
  const offset = new Date(start).getTimezoneOffset() * MINUTE;
  const first = Math.ceil((start - offset) / step) * step + offset;
  const ticks: number[] = [];
  for (let t = first; t <= end; t += step) {
    ticks.push(t);
  }
  return ticks.length ? ticks : [start, end];
}

/** A tick's time label: "14:05" (or "14:05:30" when the steps are under a minute). */
export function formatTick(t: number, withSeconds: boolean): string {
  const d = new Date(t);
  const pad = (n: number) => String(n).padStart(2, '0');
  const text = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return withSeconds ? `${text}:${pad(d.getSeconds())}` : text;
}

/** A chart's size and margins (SVG user units); the plot lies inside the margins. */
export interface IChartBox {
  width: number;
  height: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
}

/** The plot inside a box, with its value axis running from 0 up to the last of `ticks`. */
export interface IValueScale {
  box: IChartBox;
  ticks: number[];
  plotWidth: number;
  plotHeight: number;
  /** The height (SVG y) of a value. */
  y: (value: number) => number;
}

export function valueScale(box: IChartBox, ticks: number[]): IValueScale {
  const top = ticks[ticks.length - 1];
  const plotWidth = box.width - box.left - box.right;
  const plotHeight = box.height - box.top - box.bottom;
  return {
    box,
    ticks,
    plotWidth,
    plotHeight,
    y: value => box.top + plotHeight - (value / top) * plotHeight
  };
}
