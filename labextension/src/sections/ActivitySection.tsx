/**
 * Activity: the audit trail, live over the WebSocket, with filters and an export.
 */
import { ServerConnection } from '@jupyterlab/services';
import * as React from 'react';

import { auditExportUrl, getTicket, IAuditFilter, IAuditRecord } from '../api';
import { AuditFeed } from '../audit';
import { formatClock, formatCount, formatMs } from '../format';
import { useAction, useStore } from '../hooks';
import { Badge, Button, Empty, ErrorNotice, Loading } from './common';
import { ISectionProps } from './ModelsSection';

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
  const tokens =
    record.prompt_tokens !== null && record.prompt_tokens !== undefined
      ? `${formatCount(record.prompt_tokens)} → ${formatCount(record.completion_tokens ?? 0)} tok`
      : '';
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
        {tokens && <span>{tokens}</span>}
        {timing && <span>{timing}</span>}
        {record.error_type && (
          <span className="jp-MLXPanel-recordError">{record.error_type}</span>
        )}
      </div>
    </li>
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

export function ActivitySection({ service }: ISectionProps): JSX.Element {
  const isAdmin = service.isAdmin;
  const feed = React.useMemo(
    () => new AuditFeed(service.serverSettings),
    [service]
  );
  const state = useStore(feed.store);
  const [draft, setDraft] = React.useState<IAuditFilter>({});
  const [filter, setFilter] = React.useState<IAuditFilter>({});
  const exporting = useAction();

  React.useEffect(() => {
    void feed.start(filter);
  }, [feed, filter]);
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
  const { records, total, dropped, connection, error, loading } = state;

  return (
    <div className="jp-MLXPanel-section">
      <div className="jp-MLXPanel-row">
        <span className="jp-MLXPanel-spacer" />
        <Button
          kind="minimal"
          busy={exporting.busy === 'jsonl'}
          onClick={() =>
            void exporting.run('jsonl', () =>
              exportAudit('jsonl', filter, service.serverSettings)
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
              exportAudit('csv', filter, service.serverSettings)
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
          {records.length} of {total} records
        </span>
      </div>
      {dropped > 0 && (
        <div className="jp-MLXPanel-notice jp-mod-warning" role="alert">
          {dropped} live records were skipped (too many at once).{' '}
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
      {loading && !records.length && <Loading>Loading activity…</Loading>}
      {!loading && !error && records.length === 0 && (
        <Empty>
          {Object.keys(filter).length
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
    </div>
  );
}
