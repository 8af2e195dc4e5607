/**
 * The frame every chart in the panel shares: a title with a summary, an SVG with a value axis
 * (round ticks and grid lines) and a base line under the plot, then a legend and the unit.
 * Each chart draws its own marks and x labels inside it.
 */
import * as React from 'react';

import { IValueScale } from '../chart';

/** A legend entry: a swatch of the series' style and its name. */
export interface ILegendKey {
  key: string;
  label: string;
  swatch: React.ReactNode;
}

/** A filled square in a bar series' class (colour). */
export function BarSwatch({ className }: { className: string }): JSX.Element {
  return (
    <svg width="10" height="10" aria-hidden="true">
      <rect className={className} width="10" height="10" />
    </svg>
  );
}

export function Chart({
  field,
  title,
  summary,
  label,
  scale,
  formatValue,
  xLabels,
  legend,
  unit,
  children
}: {
  /** The figure's `data-field`. */
  field: string;
  title: string;
  /** Beside the title, e.g. the total; `field` is its `data-field`. */
  summary: { field: string; text: React.ReactNode };
  /** The SVG's accessible description. */
  label: string;
  scale: IValueScale;
  formatValue: (value: number) => string;
  /** Labels (and tick marks) along the x axis. */
  xLabels: React.ReactNode;
  legend: ILegendKey[];
  /** What one unit of the value axis is: "tokens per day (UTC)". */
  unit: string;
  /** The marks: bars, lines, points. */
  children: React.ReactNode;
}): JSX.Element {
  const { box, ticks, plotHeight, y } = scale;
  return (
    <figure className="jp-MLXPanel-chart" data-field={field}>
      <figcaption className="jp-MLXPanel-chartTitle">
        <span>{title}</span>
        <span data-field={summary.field}>{summary.text}</span>
      </figcaption>
      <svg
        viewBox={`0 0 ${box.width} ${box.height}`}
        width="100%"
        role="img"
        aria-label={label}
      >
        <g className="jp-MLXPanel-chartAxis" data-axis="y">
          {ticks.map(v => (
            <g key={v}>
              <line
                className="jp-MLXPanel-chartGrid"
                x1={box.left}
                x2={box.width - box.right}
                y1={y(v)}
                y2={y(v)}
              />
              <text
                x={box.left - 4}
                y={y(v)}
                textAnchor="end"
                dominantBaseline="middle"
              >
                {formatValue(v)}
              </text>
            </g>
          ))}
        </g>
        <g className="jp-MLXPanel-chartAxis" data-axis="x">
          <line
            className="jp-MLXPanel-chartBase"
            x1={box.left}
            x2={box.width - box.right}
            y1={box.top + plotHeight}
            y2={box.top + plotHeight}
          />
          {xLabels}
        </g>
        {children}
      </svg>
      <div className="jp-MLXPanel-chartLegend" data-field="legend">
        {legend.map(k => (
          <span key={k.key} className="jp-MLXPanel-chartKey">
            {k.swatch}
            {k.label}
          </span>
        ))}
        <span className="jp-MLXPanel-chartUnit" data-field="unit">
          {unit}
        </span>
      </div>
    </figure>
  );
}
