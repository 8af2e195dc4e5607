/**
 * Downloads: start one by repo id, follow live progress (bytes, rate, ETA), cancel.
 */
import * as React from 'react';

import { IDownload } from '../api';
import { isActive, isFailed, progressText } from '../downloads';
import { formatEta, formatRate, formatRelative } from '../format';
import { useAction, usePoll, useStore } from '../hooks';
import { throwIfFailed } from '../store';
import {
  Badge,
  Bar,
  Button,
  Empty,
  ErrorNotice,
  Loading,
  SectionHeader
} from './common';
import { ISectionProps } from './ModelsSection';

const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;

function statusKind(status: string): string {
  if (isFailed(status)) {
    return 'error';
  }
  if (status === 'cancelled' || status === 'canceled') {
    return 'muted';
  }
  return isActive(status) ? 'info' : 'ok';
}

export function DownloadItem({
  download,
  busy,
  onCancel,
  onRetry,
  onRemove
}: {
  download: IDownload;
  /** The action under way on it: cancel, retry or remove. */
  busy: string | null;
  onCancel: () => void;
  onRetry: () => void;
  onRemove: () => void;
}): JSX.Element {
  const failed = isFailed(download.status);
  const active = isActive(download.status);
  const progress = progressText(download);
  const live = [
    active && typeof download.rate_bps === 'number'
      ? formatRate(download.rate_bps)
      : '',
    active ? formatEta(download.eta_s) : ''
  ].filter(Boolean);
  return (
    <li className="jp-MLXPanel-item" data-download={download.repo_id}>
      <div className="jp-MLXPanel-itemHead">
        <span className="jp-MLXPanel-itemTitle" title={download.repo_id}>
          {download.repo_id}
        </span>
        <Badge kind={statusKind(download.status)}>{download.status}</Badge>
      </div>
      {(active || download.total_bytes) && (
        <Bar
          kind="progressbar"
          label={`Download of ${download.repo_id}`}
          value={download.downloaded_bytes ?? 0}
          max={download.total_bytes}
          text={progress}
        />
      )}
      <div className="jp-MLXPanel-itemMeta">
        {progress && <span data-field="progress">{progress}</span>}
        {live.length > 0 && <span data-field="rate">{live.join(' · ')}</span>}
        {!active && download.created_at && (
          <span>{formatRelative(download.created_at)}</span>
        )}
      </div>
      {download.error && (
        <div className="jp-MLXPanel-itemError" data-field="reason">
          {download.error}
        </div>
      )}
      {failed && !download.error && (
        <div className="jp-MLXPanel-itemError" data-field="reason">
          The download failed; the server gave no reason.
        </div>
      )}
      {failed && (
        <div className="jp-MLXPanel-itemActions">
          <Button
            kind="accept"
            onClick={onRetry}
            busy={busy === 'retry'}
            disabled={!!busy}
            label={`Retry download of ${download.repo_id}`}
            title="Start it again (it goes on from the files already there)"
          >
            Retry
          </Button>
          <Button
            kind="warn"
            onClick={onRemove}
            busy={busy === 'remove'}
            disabled={!!busy}
            label={`Remove download of ${download.repo_id}`}
            title="Delete its partial files and take it off the list"
          >
            Remove
          </Button>
        </div>
      )}
      {active && (
        <div className="jp-MLXPanel-itemActions">
          <Button
            kind="warn"
            onClick={onCancel}
            busy={busy === 'cancel'}
            label={`Cancel download of ${download.repo_id}`}
          >
            Cancel
          </Button>
        </div>
      )}
    </li>
  );
}

export function DownloadsSection({
  service,
  interval
}: ISectionProps): JSX.Element {
  const model = service.downloads;
  const { downloads: all, removed, available, error } = useStore(model.store);
  const downloads = all.filter(d => !removed.includes(String(d.id)));
  const anyActive = downloads.some(d => isActive(d.status));
  // The list is polled while shown (SSE carries the live part); faster while something runs.
  usePoll(
    async () => {
      await model.refresh();
      throwIfFailed(model.store.state.error); // back off while the server fails
    },
    anyActive ? Math.min(interval, 5) || 5 : interval
  );
  const action = useAction();
  const [repo, setRepo] = React.useState('');
  const valid = REPO_ID.test(repo.trim());

  const start = (e: React.FormEvent) => {
    e.preventDefault();
    if (!valid) {
      return;
    }
    const id = repo.trim();
    void action.run('start', async () => {
      await model.start(id);
      setRepo('');
    });
  };

  if (available === false) {
    return (
      <div className="jp-MLXPanel-section">
        <Empty>Downloads are not available on this server yet.</Empty>
      </div>
    );
  }

  return (
    <div className="jp-MLXPanel-section">
      <form className="jp-MLXPanel-form" onSubmit={start}>
        <label className="jp-MLXPanel-label" htmlFor="jp-MLXPanel-repo">
          Download a model from the Hub
        </label>
        <div className="jp-MLXPanel-row">
          <input
            id="jp-MLXPanel-repo"
            className="jp-MLXPanel-input"
            placeholder="mlx-community/Qwen2.5-0.5B-Instruct-4bit"
            value={repo}
            onChange={e => setRepo(e.target.value)}
            aria-invalid={repo.trim() !== '' && !valid}
          />
          <Button
            type="submit"
            kind="accept"
            busy={action.busy === 'start'}
            disabled={!valid}
          >
            Download
          </Button>
        </div>
      </form>
      {action.error && (
        <ErrorNotice
          error={action.error}
          title="Download failed"
          onDismiss={action.clear}
        />
      )}
      {error && !error.isNotFound && (
        <ErrorNotice error={error} title="Cannot list downloads" />
      )}
      <SectionHeader title="Downloads" level={4} />
      {available === null && !error && <Loading>Loading downloads…</Loading>}
      {available && downloads.length === 0 && (
        <Empty>
          No downloads yet. Search the Hub in Models, or type a repo id above.
        </Empty>
      )}
      {downloads.length > 0 && (
        <ul className="jp-MLXPanel-list" aria-label="Downloads">
          {downloads.map(d => (
            <DownloadItem
              key={String(d.id)}
              download={d}
              busy={
                action.busy?.endsWith(`:${d.id}`)
                  ? action.busy.split(':')[0]
                  : null
              }
              onCancel={() =>
                void action.run(`cancel:${d.id}`, () => model.cancel(d.id))
              }
              onRetry={() =>
                void action.run(`retry:${d.id}`, () => model.retry(d))
              }
              onRemove={() =>
                void action.run(`remove:${d.id}`, () => model.remove(d.id))
              }
            />
          ))}
        </ul>
      )}
    </div>
  );
}
