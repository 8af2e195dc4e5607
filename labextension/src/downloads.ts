/**
 * Downloads: the list from `GET mlx/api/downloads`, kept live by one `EventSource` per
 * active download on `downloads/{id}/progress?token=<ticket>` (a fresh ticket per
 * connection). Lives in the shared service, so progress keeps flowing while the panel is
 * closed and a download started from the command palette shows up in the panel.
 */
import { ServerConnection } from '@jupyterlab/services';

import {
  ApiError,
  cancelDownload,
  downloadProgressUrl,
  IDownload,
  listDownloads,
  startDownload,
  toApiError
} from './api';
import { EventSourceFactory, TicketStreams } from './eventstreams';
import { formatBytes, percent } from './format';
import { Store } from './store';

const TERMINAL = new Set([
  'completed',
  'complete',
  'done',
  'succeeded',
  'success',
  'failed',
  'error',
  'cancelled',
  'canceled'
]);

/** Whether a download may still make progress. */
export function isActive(status: string | null | undefined): boolean {
  return !!status && !TERMINAL.has(status.toLowerCase());
}

/** "1.2 GiB of 3.4 GiB · 35% · 2/5 files" */
export function progressText(d: IDownload): string {
  const parts: string[] = [];
  const done = d.downloaded_bytes ?? 0;
  if (typeof d.total_bytes === 'number' && d.total_bytes > 0) {
    parts.push(`${formatBytes(done)} of ${formatBytes(d.total_bytes)}`);
    const p = percent(done, d.total_bytes);
    if (p !== null) {
      parts.push(`${p}%`);
    }
  } else if (done) {
    parts.push(formatBytes(done));
  }
  if (typeof d.files_total === 'number' && d.files_total > 0) {
    parts.push(`${d.files_done ?? 0}/${d.files_total} files`);
  }
  return parts.join(' · ');
}

export function isFailed(status: string | null | undefined): boolean {
  return status === 'failed' || status === 'error';
}

/** Insert or update a download (by id), newest first; progress fields only move forward. */
export function mergeDownload(
  list: IDownload[],
  update: Partial<IDownload> & { id: IDownload['id'] }
): IDownload[] {
  const index = list.findIndex(d => String(d.id) === String(update.id));
  if (index < 0) {
    if (!update.repo_id) {
      return list;
    }
    return sortDownloads([
      { status: 'queued', ...update } as IDownload,
      ...list
    ]);
  }
  const before = list[index];
  const merged: IDownload = { ...before };
  for (const [key, value] of Object.entries(update)) {
    if (value !== undefined) {
      (merged as any)[key] = value;
    }
  }
  // An event that arrives late must not move the bar backwards while still running.
  if (
    isActive(merged.status) &&
    typeof before.downloaded_bytes === 'number' &&
    typeof merged.downloaded_bytes === 'number' &&
    merged.downloaded_bytes < before.downloaded_bytes
  ) {
    merged.downloaded_bytes = before.downloaded_bytes;
  }
  // Rate and ETA only mean something while the transfer runs.
  if (!isActive(merged.status)) {
    merged.rate_bps = null;
    merged.eta_s = null;
  }
  const next = list.slice();
  next[index] = merged;
  return next;
}

/** Replace the list with the server's, keeping live rate/ETA we already know. */
export function replaceDownloads(
  current: IDownload[],
  fresh: IDownload[]
): IDownload[] {
  const known = new Map(current.map(d => [String(d.id), d]));
  return sortDownloads(
    fresh.map(d => {
      const old = known.get(String(d.id));
      if (old && isActive(d.status)) {
        return { rate_bps: old.rate_bps, eta_s: old.eta_s, ...d };
      }
      return d;
    })
  );
}

function sortDownloads(list: IDownload[]): IDownload[] {
  return list.slice().sort((a, b) => {
    const ta = Date.parse(a.created_at ?? '') || 0;
    const tb = Date.parse(b.created_at ?? '') || 0;
    if (ta !== tb) {
      return tb - ta;
    }
    return String(b.id).localeCompare(String(a.id), undefined, {
      numeric: true
    });
  });
}

export interface IDownloadsState {
  downloads: IDownload[];
  /** Failed downloads whose leftovers the user removed: no longer listed. */
  removed: string[];
  /** False when the server has no downloads API (404); null until first asked. */
  available: boolean | null;
  error: ApiError | null;
}

/** Events a progress stream may use besides the default `message`. */
const EVENT_NAMES = [
  'progress',
  'status',
  'update',
  'done',
  'complete',
  'completed',
  'error',
  'failed',
  'cancelled'
];

export class DownloadsModel {
  readonly store = new Store<IDownloadsState>({
    downloads: [],
    removed: [],
    available: null,
    error: null
  });

  constructor(
    private readonly _settings?: ServerConnection.ISettings,
    factory?: EventSourceFactory
  ) {
    this._streams = new TicketStreams(
      _settings,
      factory,
      () => void this.refresh()
    );
  }

  /** Called when a download finishes (to refresh the local model list). */
  onFinished: ((download: IDownload) => void) | null = null;

  async refresh(): Promise<void> {
    try {
      const fresh = await listDownloads(this._settings);
      this.store.set(s => ({
        ...s,
        downloads: replaceDownloads(s.downloads, fresh),
        available: true,
        error: null
      }));
      this._follow();
    } catch (err) {
      const error = toApiError(err);
      this.store.set({
        available: error.isNotFound ? false : this.store.state.available,
        error
      });
    }
  }

  async start(repoId: string, revision?: string): Promise<IDownload> {
    const record = await startDownload(repoId, revision, this._settings);
    this.store.set(s => ({
      ...s,
      available: true,
      downloads: mergeDownload(s.downloads, record)
    }));
    this._follow();
    return record;
  }

  async cancel(id: IDownload['id']): Promise<void> {
    await cancelDownload(id, this._settings);
    this._streams.close(String(id));
    this.store.set(s => ({
      ...s,
      downloads: mergeDownload(s.downloads, { id, status: 'cancelled' })
    }));
    void this.refresh();
  }

  /** A failed download again (the server resumes from what it kept). */
  retry(download: IDownload): Promise<IDownload> {
    return this.start(download.repo_id, download.revision ?? undefined);
  }

  /**
   * Remove what a failed download left (the server deletes its partial files) and stop
   * listing it.
   */
  async remove(id: IDownload['id']): Promise<void> {
    await cancelDownload(id, this._settings);
    this.store.set(s => ({ ...s, removed: [...s.removed, String(id)] }));
  }

  /** Apply one progress event (record fields + `rate_bps`, `eta_s`). */
  apply(update: Partial<IDownload> & { id: IDownload['id'] }): void {
    const before = this.store.state.downloads.find(
      d => String(d.id) === String(update.id)
    );
    this.store.set(s => ({
      ...s,
      downloads: mergeDownload(s.downloads, update)
    }));
    const after = this.store.state.downloads.find(
      d => String(d.id) === String(update.id)
    );
    if (after && !isActive(after.status)) {
      this._streams.close(String(update.id));
      if (before && isActive(before.status)) {
        this.onFinished?.(after);
      }
    }
  }

  dispose(): void {
    this._streams.dispose();
  }

  /** Follow the progress of every active download. */
  private _follow(): void {
    for (const { id } of this.store.state.downloads.filter(d =>
      isActive(d.status)
    )) {
      this._streams.follow(String(id), {
        url: ticket => downloadProgressUrl(id, ticket, this._settings),
        events: EVENT_NAMES,
        receive: (data: any) => {
          const isUpdate =
            !!data && typeof data === 'object' && !Array.isArray(data);
          if (isUpdate) {
            this.apply({ ...data, id: data.id ?? id });
          }
          return isUpdate;
        }
      });
    }
  }

  private _streams: TicketStreams;
}
