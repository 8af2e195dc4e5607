/**
 * Top of Activity: tokens per day over the last two weeks (`mlx/api/usage?group_by=day`) and
 * what is left of the token budgets (`mlx/api/budgets`): your own, or every user's for admins.
 */
import * as React from 'react';

import { ApiError, toApiError } from '../api';
import { IChartBox, niceTicks, valueScale } from '../chart';
import { formatClock, formatCount, plural } from '../format';
import { usePoll } from '../hooks';
import { MLXService } from '../service';
import {
  budgetLines,
  budgetsToShow,
  exactCount,
  firstDay,
  getBudgets,
  getUsageByDay,
  IBudgetStatus,
  IUsageDay,
  usageDays
} from '../usage';
import { BarSwatch, Chart } from './Chart';
import { Bar, ErrorNotice, SectionHeader } from './common';

const DAYS = 14;
const PLOT: IChartBox = {
  width: 260,
  height: 110,
  left: 40,
  right: 6,
  top: 8,
  bottom: 20
};

/** "Dec 6" of a UTC day "2026-12-06". */
function dayLabel(day: string): string {
  return new Date(`${day}T00:00:00Z`).toLocaleDateString(undefined, {
    month: 'short',
    day: 'numeric',
    timeZone: 'UTC'
  });
}

/** Prompt and completion tokens per UTC day, stacked, with a value axis and day labels. */
export function UsageChart({ days }: { days: IUsageDay[] }): JSX.Element {
  const totals = days.map(d => d.prompt + d.completion);
  const scale = valueScale(PLOT, niceTicks(Math.max(0, ...totals), 3));
  const { plotWidth, y } = scale;
  const step = plotWidth / Math.max(1, days.length);
  const total = totals.reduce((a, b) => a + b, 0);
  const requests = days.reduce((n, d) => n + d.requests, 0);
  // Day labels: the first, the last and every week between.
  const labelled = new Set([0, days.length - 1, days.length - 8]);
  return (
    <Chart
      field="usage-chart"
      title="Tokens per day"
      summary={{
        field: 'usage-total',
        text: `${formatCount(total)} tokens, ${plural(requests, 'request')} in ${DAYS} days`
      }}
      label={`Tokens per day: ${formatCount(total)} tokens from ${days[0]?.day} to ${days[days.length - 1]?.day}`}
      scale={scale}
      formatValue={formatCount}
      xLabels={days.map((d, i) =>
        labelled.has(i) ? (
          <text
            key={d.day}
            x={PLOT.left + (i + 0.5) * step}
            y={PLOT.height - 6}
            textAnchor={
              i === 0 ? 'start' : i === days.length - 1 ? 'end' : 'middle'
            }
          >
            {dayLabel(d.day)}
          </text>
        ) : null
      )}
      legend={[
        {
          key: 'prompt',
          label: 'prompt',
          swatch: <BarSwatch className="jp-MLXPanel-chartPrompt" />
        },
        {
          key: 'completion',
          label: 'completion',
          swatch: <BarSwatch className="jp-MLXPanel-chartCompletion" />
        }
      ]}
      unit="tokens per day (UTC)"
    >
      {days.map((d, i) => (
        <g key={d.day} data-day={d.day}>
          <title>
            {`${dayLabel(d.day)}: ${exactCount(d.prompt)} prompt, ${exactCount(d.completion)} completion tokens (${plural(d.requests, 'request')})`}
          </title>
          <rect
            className="jp-MLXPanel-chartPrompt"
            x={PLOT.left + i * step + 1}
            y={y(d.prompt)}
            width={Math.max(step - 2, 0.5)}
            height={Math.max(0, y(0) - y(d.prompt))}
          />
          <rect
            className="jp-MLXPanel-chartCompletion"
            x={PLOT.left + i * step + 1}
            y={y(d.prompt + d.completion)}
            width={Math.max(step - 2, 0.5)}
            height={Math.max(0, y(d.prompt) - y(d.prompt + d.completion))}
          />
        </g>
      ))}
    </Chart>
  );
}

/** One user's windows: a meter and "N of M tokens left" each, or "unlimited". */
export function BudgetCard({
  status,
  own
}: {
  status: IBudgetStatus;
  own: boolean;
}): JSX.Element {
  return (
    <div className="jp-MLXPanel-budget" data-user={status.user}>
      <div className="jp-MLXPanel-budgetUser">
        {own ? `${status.user} (you)` : status.user}
        {!!status.groups?.length && (
          <span className="jp-MLXPanel-budgetGroups">
            {' '}
            · {status.groups.join(', ')}
          </span>
        )}
      </div>
      <dl className="jp-MLXPanel-budgetWindows">
        {budgetLines(status).map(line => (
          <div
            key={line.window}
            className="jp-MLXPanel-budgetWindow"
            data-window={line.window}
          >
            <dt>{line.label}</dt>
            <dd
              title={`Renews ${formatClock(line.resetsAt)} (${new Date(line.resetsAt).toLocaleString()})`}
            >
              {line.fraction !== null && (
                <Bar
                  value={line.fraction}
                  max={1}
                  label={`${status.user}'s tokens used ${line.label}`}
                  text={line.text}
                />
              )}
              <span data-field="budget-left">{line.text}</span>
            </dd>
          </div>
        ))}
      </dl>
    </div>
  );
}

export function UsageBudgets({
  service,
  interval,
  refreshKey
}: {
  service: MLXService;
  interval: number;
  /** Changes when new requests are seen: fetch again. */
  refreshKey: unknown;
}): JSX.Element {
  const [days, setDays] = React.useState<IUsageDay[] | null>(null);
  const [budgets, setBudgets] = React.useState<IBudgetStatus | null>(null);
  const [error, setError] = React.useState<ApiError | null>(null);
  const load = React.useCallback(async () => {
    const now = Date.now();
    try {
      const [rows, status] = await Promise.all([
        getUsageByDay(firstDay(now, DAYS), service.serverSettings),
        getBudgets(service.serverSettings)
      ]);
      setDays(usageDays(rows, now, DAYS));
      setBudgets(status);
      setError(null);
    } catch (err) {
      setError(toApiError(err));
      throw err; // the poll backs off
    }
  }, [service]);
  const reload = usePoll(load, Math.max(interval, 0) * 6);
  React.useEffect(() => {
    void reload();
  }, [refreshKey]);
  const shown = budgets ? budgetsToShow(budgets) : [];
  return (
    <section
      aria-label="Usage and budgets"
      className="jp-MLXPanel-subsection"
      data-field="usage-budgets"
    >
      <SectionHeader title="Usage and budgets" level={4} />
      {error && !error.isNotFound && (
        <ErrorNotice error={error} title="Cannot read usage" />
      )}
      {days && <UsageChart days={days} />}
      {shown.length > 0 && (
        <div
          className="jp-MLXPanel-budgets"
          aria-label={
            shown.length > 1 ? 'Budgets left, per user' : 'Your budget left'
          }
        >
          <div className="jp-MLXPanel-chartTitle">
            <span>
              {shown.length > 1 ? 'Budgets left, per user' : 'Your budget left'}
            </span>
            <span>prompt + completion tokens</span>
          </div>
          {shown.map((s, i) => (
            <BudgetCard key={s.user} status={s} own={i === 0} />
          ))}
        </div>
      )}
    </section>
  );
}
