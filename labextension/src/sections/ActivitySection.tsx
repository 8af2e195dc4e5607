/**
 * Activity: the audit trail, live over the WebSocket, with filters and an export; "This
 * notebook" narrows it to the notebook in focus; a chart of tokens over time for the shown
 * records, and the usage per notebook (`mlx/api/audit/stats?group_by=notebook`); above them,
 * usage per day and the budgets left (UsageBudgets.tsx).
 */
import { ServerConnection } from '@jupyterlab/services';
import * as React from 'react';

import {
  auditExportUrl,
  getAuditGroups,
  getTicket,
  IAuditFilter,
  IAuditGroup,
  IAuditRecord
} from '../api';
import {
  AuditFeed,
  effectiveFilter,
  ITokenBin,
  tokenSeries,
  usageUnits
} from '../audit';
import {
  formatTick,
  IChartBox,
  niceTicks,
  timeTicks,
  valueScale
} from '../chart';
import {
  formatClock,
  formatCount,
  formatDuration,
  formatMs,
  plural
} from '../format';
import { useAction, useStore } from '../hooks';
import { BarSwatch, Chart } from './Chart';
import { Badge, Button, Empty, ErrorNotice, Loading } from './common';
import { ISectionProps } from './ModelsSection';
import { UsageBudgets } from './UsageBudgets';

const STATUSES = ['', 'ok', 'error', 'cancelled', 'timeout'];

const CONNECTION_TEXT: Record<string, string> = {
  idle: 'Not following',
  connecting: 'Connecting…',
  live: 'Live',
  retrying: 'Reconnecting…',
  refused: 'Live updates refused'
};

function statusKind(status: string): string {
  return status === 'ok'
    ? 'ok'
    : status === 'error' || status === 'timeout'
      ? 'error'
      : 'muted';
}

function Record({
  record,
  showUser
}: {
  record: IAuditRecord;
  showUser: boolean;
}): JSX.Element {
  const tokens = usageText(record);
  const timing = [
    typeof record.ttft_ms === 'number'
      ? `TTFT ${formatMs(record.ttft_ms)}`
      : '',
    typeof record.duration_ms === 'number' ? formatMs(record.duration_ms) : ''
  ]
    .filter(Boolean)
    .join(' · ');
  return (
    <li
      className="jp-MLXPanel-record"
      data-action={record.action}
      data-record-id={record.id}
    >
      <div className="jp-MLXPanel-itemHead">
        <span
          className="jp-MLXPanel-recordAction"
          title={record.endpoint ?? record.action}
        >
          {record.action}
        </span>
        <Badge kind={statusKind(record.status)}>{record.status}</Badge>
      </div>
      <div className="jp-MLXPanel-itemMeta">
        <time
          className="jp-MLXPanel-recordTime"
          dateTime={record.time}
          title={record.time}
        >
          {formatClock(record.time)}
        </time>
        {record.model && <span data-field="model">{record.model}</span>}
        {showUser && record.user && (
          <span>
            {record.user}
            {record.client ? ` (${record.client})` : ''}
          </span>
        )}
        {record.notebook && (
          <span
            data-field="notebook"
            title={`${record.notebook}${record.cell_id ? ` (cell ${record.cell_id})` : ''}`}
          >
            {basename(record.notebook)}
          </span>
        )}
        {tokens && <span>{tokens}</span>}
        {timing && <span>{timing}</span>}
        {record.error_type && (
          <span className="jp-MLXPanel-recordError">{record.error_type}</span>
        )}
      </div>
    </li>
  );
}

/** What a record used, in its units: "12 → 40 tok", "3.2 s audio → 9 tok", "80 chars → audio". */
export function usageText(record: IAuditRecord): string {
  if (record.prompt_tokens === null || record.prompt_tokens === undefined) {
    return '';
  }
  const u = usageUnits(record);
  if (u.audio === 'transcription') {
    return `${formatSeconds(u.audioIn ?? 0)} s audio → ${formatCount(u.completionTokens)} tok`;
  }
  if (u.audio === 'speech') {
    return `${plural(u.characters, 'char')} → ${u.audioOut === null ? 'audio' : `${formatSeconds(u.audioOut)} s audio`}`;
  }
  return `${formatCount(u.promptTokens)} → ${formatCount(u.completionTokens)} tok`;
}

function basename(path: string): string {
  return path.split('/').pop() || path;
}

const CHART: IChartBox = {
  width: 300,
  height: 132,
  left: 40,
  right: 8,
  top: 10,
  bottom: 22
};

interface ISeries {
  key: string;
  label: string;
  /** Its bars' class (colour). */
  className: string;
  value: (bin: ITokenBin) => number;
}

/**
 * Stacked bars over time with both axes: values on the left (round ticks, `unit`), clock times
 * below, a legend of the series and each bar's figures as its tooltip.
 */
export function BarChart({
  bins,
  series,
  unit,
  title,
  format,
  field
}: {
  bins: ITokenBin[];
  series: ISeries[];
  /** The unit of one bar, for the axis: "tokens", "seconds of audio". */
  unit: string;
  title: string;
  format: (n: number) => string;
  field: string;
}): JSX.Element | null {
  const totals = bins.map(b => series.reduce((n, s) => n + s.value(b), 0));
  const max = Math.max(0, ...totals);
  if (!bins.length || max === 0) {
    return null;
  }
  const scale = valueScale(CHART, niceTicks(max, 4));
  const { plotWidth, plotHeight, y } = scale;
  const start = bins[0].start;
  const end = bins[bins.length - 1].end;
  const x = (t: number) =>
    CHART.left + ((t - start) / (end - start)) * plotWidth;
  const binWidth = bins[0].end - bins[0].start;
  const times = timeTicks(start, end, 3);
  const withSeconds = times.length > 1 && times[1] - times[0] < 60_000;
  const total = totals.reduce((a, b) => a + b, 0);
  const per = formatDuration(binWidth / 1000);
  return (
    <Chart
      field={field}
      title={title}
      summary={{
        field: 'chart-total',
        text: `${format(total)} ${unit} in all`
      }}
      label={`${title}: ${format(total)} ${unit} from ${formatClock(new Date(start).toISOString())} to ${formatClock(new Date(end).toISOString())}, one bar per ${per}`}
      scale={scale}
      formatValue={format}
      xLabels={times.map(t => (
        <g key={t}>
          <line
            className="jp-MLXPanel-chartBase"
            x1={x(t)}
            x2={x(t)}
            y1={CHART.top + plotHeight}
            y2={CHART.top + plotHeight + 3}
          />
          <text
            x={x(t)}
            y={CHART.height - 6}
            textAnchor={
              x(t) < CHART.left + 16
                ? 'start'
                : x(t) > CHART.width - CHART.right - 16
                  ? 'end'
                  : 'middle'
            }
          >
            {formatTick(t, withSeconds)}
          </text>
        </g>
      ))}
      legend={series.map(s => ({
        key: s.key,
        label: s.label,
        swatch: <BarSwatch className={s.className} />
      }))}
      unit={`${unit} per ${per}`}
    >
      {bins.map((b, i) => {
        const w = Math.max(x(b.end) - x(b.start) - 1, 0.5);
        let base = 0;
        const tip = `${formatClock(new Date(b.start).toISOString())}–${formatClock(new Date(b.end).toISOString())}: ${series.map(s => `${format(s.value(b))} ${s.label}`).join(', ')} (${plural(b.requests, 'request')})`;
        return (
          <g key={i} data-bin={i}>
            <title>{tip}</title>
            {series.map(s => {
              const v = s.value(b);
              const rect = (
                <rect
                  key={s.key}
                  className={s.className}
                  x={x(b.start) + 0.5}
                  y={y(base + v)}
                  width={w}
                  height={Math.max(0, y(base) - y(base + v))}
                />
              );
              base += v;
              return rect;
            })}
          </g>
        );
      })}
    </Chart>
  );
}

const TOKEN_SERIES: ISeries[] = [
  {
    key: 'prompt',
    label: 'prompt',
    className: 'jp-MLXPanel-chartPrompt',
    value: b => b.prompt
  },
  {
    key: 'completion',
    label: 'completion',
    className: 'jp-MLXPanel-chartCompletion',
    value: b => b.completion
  }
];

const AUDIO_SERIES: ISeries[] = [
  {
    key: 'audio',
    label: 'audio in and out',
    className: 'jp-MLXPanel-chartAudio',
    value: b => b.audio
  }
];

/** Seconds, short: 0.5 -> "0.5", 12 -> "12", 90 -> "90". */
function formatSeconds(n: number): string {
  return n >= 10 || Number.isInteger(n)
    ? formatCount(Math.round(n))
    : n.toFixed(1);
}

/** Tokens over time of the shown records; audio (in seconds) in a chart of its own. */
export function TokenChart({ bins }: { bins: ITokenBin[] }): JSX.Element {
  return (
    <>
      <BarChart
        bins={bins}
        series={TOKEN_SERIES}
        unit="tokens"
        title="Tokens over time"
        format={formatCount}
        field="token-chart"
      />
      <BarChart
        bins={bins}
        series={AUDIO_SERIES}
        unit="seconds"
        title="Audio over time"
        format={formatSeconds}
        field="audio-chart"
      />
    </>
  );
}

/** Requests, tokens and time per notebook (`stats?group_by=notebook`). */
function NotebookUsage({
  groups,
  focused
}: {
  groups: IAuditGroup[];
  focused: string | null;
}): JSX.Element {
  const rows = groups.filter(g => g.key !== null);
  if (!rows.length) {
    return <Empty>No requests from notebooks yet.</Empty>;
  }
  const audio = rows.some(g => (g.audio_seconds ?? 0) > 0);
  return (
    <table className="jp-MLXPanel-table" aria-label="Usage per notebook">
      <thead>
        <tr>
          <th>Notebook</th>
          <th>Requests</th>
          <th>Tokens</th>
          {audio && <th>Audio</th>}
          <th>Time</th>
        </tr>
      </thead>
      <tbody>
        {rows.map(g => (
          <tr
            key={g.key}
            data-notebook={g.key}
            className={g.key === focused ? 'jp-mod-current' : undefined}
          >
            <td title={g.key ?? ''}>{basename(g.key ?? '')}</td>
            <td>{formatCount(g.requests)}</td>
            <td
              title={`${g.prompt_tokens} prompt + ${g.completion_tokens} completion`}
            >
              {formatCount(g.prompt_tokens + g.completion_tokens)}
            </td>
            {audio && (
              <td data-field="audio">
                {g.audio_seconds ? `${formatSeconds(g.audio_seconds)} s` : ''}
              </td>
            )}
            <td>{formatMs(g.duration_ms)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

/**
 * Download the export through a plain link: the server streams it to disk, authenticated by
 * a fresh ticket in `?token=` (a link cannot send headers).
 */
async function exportAudit(
  format: 'jsonl' | 'csv',
  filter: IAuditFilter,
  settings: ServerConnection.ISettings
): Promise<void> {
  const ticket = await getTicket(settings);
  const link = document.createElement('a');
  link.href = auditExportUrl(format, filter, ticket, settings);
  link.download = `mlx-audit.${format}`;
  link.rel = 'noopener';
  link.style.display = 'none';
  document.body.appendChild(link);
  link.click();
  link.remove();
}

export function ActivitySection({
  service,
  interval
}: ISectionProps): JSX.Element {
  const isAdmin = service.isAdmin;
  const feed = React.useMemo(
    () => new AuditFeed(service.serverSettings),
    [service]
  );
  const state = useStore(feed.store);
  const [draft, setDraft] = React.useState<IAuditFilter>({});
  const [filter, setFilter] = React.useState<IAuditFilter>({});
  const [thisNotebook, setThisNotebook] = React.useState(false);
  const focused = useStore(service.focus).notebook;
  const shown = effectiveFilter(filter, thisNotebook, focused);
  const shownKey = JSON.stringify(shown);
  const exporting = useAction();
  const [groups, setGroups] = React.useState<IAuditGroup[] | null>(null);

  React.useEffect(() => {
    if (shown === null) {
      feed.stop();
      return;
    }
    void feed.start(shown);
  }, [feed, shownKey]);
  React.useEffect(() => () => feed.dispose(), [feed]);

  const apply = (e: React.FormEvent) => {
    e.preventDefault();
    const next: IAuditFilter = {};
    for (const [key, value] of Object.entries(draft)) {
      if (typeof value === 'string' && value.trim()) {
        (next as any)[key] = value.trim();
      }
    }
    setFilter(next);
  };
  const set =
    (key: keyof IAuditFilter) =>
    (e: React.ChangeEvent<HTMLInputElement | HTMLSelectElement>) =>
      setDraft(d => ({ ...d, [key]: e.target.value }));

  const models = (service.store.state.pool?.models ?? []).map(m => m.model);
  const { dropped, connection, error, loading } = state;
  const records = shown === null ? [] : state.records;
  const total = shown === null ? 0 : state.total;
  const bins = React.useMemo(() => tokenSeries(records), [records]);

  // Usage per notebook: on open, and again whenever the shown records change (new requests).
  const newest = records.length ? records[0].id : 0;
  React.useEffect(() => {
    let cancelled = false;
    getAuditGroups('notebook', filter, service.serverSettings)
      .then(g => !cancelled && setGroups(g))
      .catch(() => !cancelled && setGroups([]));
    return () => {
      cancelled = true;
    };
  }, [service, newest, JSON.stringify(filter)]);

  return (
    <div className="jp-MLXPanel-section">
      <UsageBudgets service={service} interval={interval} refreshKey={newest} />
      <div className="jp-MLXPanel-row">
        <label
          className="jp-MLXPanel-toggle"
          title={
            focused
              ? `Only the requests of ${focused}`
              : 'Only the requests of the notebook in focus'
          }
        >
          <input
            type="checkbox"
            checked={thisNotebook}
            onChange={e => setThisNotebook(e.target.checked)}
            data-field="this-notebook"
          />
          This notebook
        </label>
        <span className="jp-MLXPanel-spacer" />
        <Button
          kind="minimal"
          busy={exporting.busy === 'jsonl'}
          onClick={() =>
            void exporting.run('jsonl', () =>
              exportAudit('jsonl', shown ?? filter, service.serverSettings)
            )
          }
          title="Download the filtered records as JSON lines"
        >
          Export JSONL
        </Button>
        <Button
          kind="minimal"
          busy={exporting.busy === 'csv'}
          onClick={() =>
            void exporting.run('csv', () =>
              exportAudit('csv', shown ?? filter, service.serverSettings)
            )
          }
          title="Download the filtered records as CSV"
        >
          Export CSV
        </Button>
      </div>
      <details
        className="jp-MLXPanel-filters"
        open={Object.keys(filter).length > 0 || undefined}
      >
        <summary>
          Filters
          {Object.keys(filter).length ? ` (${Object.keys(filter).length})` : ''}
        </summary>
        <form
          className="jp-MLXPanel-form"
          onSubmit={apply}
          aria-label="Activity filters"
        >
          <div className="jp-MLXPanel-grid">
            {isAdmin && (
              <label>
                User
                <input
                  className="jp-MLXPanel-input"
                  value={draft.user ?? ''}
                  onChange={set('user')}
                  placeholder="any"
                />
              </label>
            )}
            <label>
              Model
              <input
                className="jp-MLXPanel-input"
                value={draft.model ?? ''}
                onChange={set('model')}
                placeholder="any"
                list="jp-MLXPanel-activityModels"
              />
              <datalist id="jp-MLXPanel-activityModels">
                {models.map(m => (
                  <option key={m} value={m} />
                ))}
              </datalist>
            </label>
            <label>
              Status
              <select
                className="jp-MLXPanel-select"
                value={draft.status ?? ''}
                onChange={set('status')}
              >
                {STATUSES.map(s => (
                  <option key={s} value={s}>
                    {s || 'any'}
                  </option>
                ))}
              </select>
            </label>
          </div>
          <div className="jp-MLXPanel-row">
            <Button type="submit">Apply filters</Button>
            {Object.keys(filter).length > 0 && (
              <Button
                kind="minimal"
                onClick={() => {
                  setDraft({});
                  setFilter({});
                }}
              >
                Clear
              </Button>
            )}
          </div>
        </form>
      </details>
      {exporting.error && (
        <ErrorNotice
          error={exporting.error}
          title="Export failed"
          onDismiss={exporting.clear}
        />
      )}
      <div className="jp-MLXPanel-itemMeta">
        <span
          className={`jp-MLXPanel-live jp-mod-${connection}`}
          data-field="connection"
          role="status"
          aria-live="polite"
        >
          {CONNECTION_TEXT[connection]}
        </span>
        <span data-field="count">
          {records.length} of {plural(total, 'record')}
        </span>
      </div>
      {dropped > 0 && (
        <div className="jp-MLXPanel-notice jp-mod-warning" role="alert">
          {plural(dropped, 'live record')} skipped (too many at once).{' '}
          <button
            type="button"
            className="jp-MLXPanel-link"
            onClick={() => void feed.reload()}
          >
            Reload
          </button>
        </div>
      )}
      {error && (
        <ErrorNotice
          error={error}
          title={connection === 'refused' ? 'Live updates refused' : undefined}
        />
      )}
      {thisNotebook && (
        <div className="jp-MLXPanel-itemMeta" data-field="focused-notebook">
          {focused ? (
            <span title={focused}>Notebook: {focused}</span>
          ) : (
            <span>No notebook in focus: open one to see its requests.</span>
          )}
        </div>
      )}
      <TokenChart bins={bins} />
      {loading && !records.length && shown !== null && (
        <Loading>Loading activity…</Loading>
      )}
      {!loading && !error && records.length === 0 && shown !== null && (
        <Empty>
          {Object.keys(shown).length
            ? 'No records match these filters.'
            : 'No activity yet. Load a model or chat with one.'}
        </Empty>
      )}
      {records.length > 0 && (
        <ul className="jp-MLXPanel-list" aria-label="Activity" aria-live="off">
          {records.map(r => (
            <Record key={r.id} record={r} showUser={isAdmin} />
          ))}
        </ul>
      )}
      {records.length < total && (
        <Button onClick={() => void feed.loadMore()} busy={loading}>
          Load older records
        </Button>
      )}
      <details className="jp-MLXPanel-filters" data-field="notebook-usage">
        <summary>Usage per notebook</summary>
        {groups === null ? (
          <Loading>Loading…</Loading>
        ) : (
          <NotebookUsage groups={groups} focused={focused} />
        )}
      </details>
    </div>
  );
}
