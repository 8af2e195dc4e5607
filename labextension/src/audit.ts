/**
 * The Activity section's data: a page of `GET mlx/api/audit` with the filters, kept live by
 * the WebSocket `mlx/api/audit/ws?token=<ticket>` (a new ticket per connection; reconnects
 * with backoff; close code 1008 means the server refused us and stops retrying).
 */
import { ServerConnection } from '@jupyterlab/services';

import {
  ApiError,
  auditSocketUrl,
  getAudit,
  getTicket,
  IAuditFilter,
  IAuditRecord,
  toApiError
} from './api';
import { Store } from './store';

/** At most this many records are kept in the list. */
export const MAX_RECORDS = 500;

export interface IAuditState {
  records: IAuditRecord[];
  total: number;
  /** Records the server dropped for us (slow consumer) since the last reload. */
  dropped: number;
  connection: 'idle' | 'connecting' | 'live' | 'retrying' | 'refused';
  error: ApiError | null;
  loading: boolean;
}

export const initialAuditState: IAuditState = {
  records: [],
  total: 0,
  dropped: 0,
  connection: 'idle',
  error: null,
  loading: false
};

export type AuditAction =
  | { type: 'page'; records: IAuditRecord[]; total: number; append?: boolean }
  | { type: 'record'; record: IAuditRecord; filter: IAuditFilter }
  | { type: 'gap'; dropped: number };

/** Whether a live record matches the filters the list was loaded with. */
export function matchesFilter(
  record: IAuditRecord,
  filter: IAuditFilter
): boolean {
  if (filter.user && record.user !== filter.user) {
    return false;
  }
  if (filter.model && record.model !== filter.model) {
    return false;
  }
  if (filter.status && record.status !== filter.status) {
    return false;
  }
  if (filter.notebook && record.notebook !== filter.notebook) {
    return false;
  }
  const t = Date.parse(record.time);
  if (filter.since && !isNaN(t) && t < Date.parse(filter.since)) {
    return false;
  }
  if (filter.until && !isNaN(t) && t > Date.parse(filter.until)) {
    return false;
  }
  return true;
}

/**
 * The filters to load: the form's, plus `notebook` when "This notebook" is on. With it on and
 * no notebook in focus, null: there is nothing to show.
 */
export function effectiveFilter(
  filter: IAuditFilter,
  thisNotebook: boolean,
  focused: string | null
): IAuditFilter | null {
  if (!thisNotebook) {
    return filter;
  }
  return focused ? { ...filter, notebook: focused } : null;
}

/** Transcription uploads are decoded to 16 kHz mono: their `prompt_tokens` are samples at this rate. */
export const TRANSCRIPTION_SAMPLE_RATE = 16000;

/**
 * What an audit record used, in the units it was used in: tokens for text, seconds for audio
 * (the audio routes keep samples and characters in the token columns: never tokens).
 */
export interface IUsageUnits {
  promptTokens: number;
  completionTokens: number;
  /** Seconds of audio in (transcriptions) or out (speech); null when the server did not say. */
  audioIn: number | null;
  audioOut: number | null;
  /** Characters of text in (speech). */
  characters: number;
  audio: 'transcription' | 'speech' | null;
}

/** Which audio route a record is of, from its endpoint (or its action). */
export function audioRoute(
  record: IAuditRecord
): 'transcription' | 'speech' | null {
  const endpoint = record.endpoint ?? '';
  if (
    /\/audio\/transcriptions\/?$/.test(endpoint) ||
    record.action === 'transcriptions'
  ) {
    return 'transcription';
  }
  if (/\/audio\/speech\/?$/.test(endpoint) || record.action === 'speech') {
    return 'speech';
  }
  return null;
}

export function usageUnits(record: IAuditRecord): IUsageUnits {
  const prompt = record.prompt_tokens ?? 0;
  const completion = record.completion_tokens ?? 0;
  const seconds =
    typeof record.audio_seconds === 'number' ? record.audio_seconds : null;
  const audio = audioRoute(record);
  if (audio === 'transcription') {
    return {
      promptTokens: 0,
      completionTokens: completion,
      audioIn: seconds ?? prompt / TRANSCRIPTION_SAMPLE_RATE,
      audioOut: null,
      characters: 0,
      audio
    };
  }
  if (audio === 'speech') {
    return {
      promptTokens: 0,
      completionTokens: 0,
      audioIn: null,
      audioOut: seconds,
      characters: prompt,
      audio
    };
  }
  return {
    promptTokens: prompt,
    completionTokens: completion,
    audioIn: null,
    audioOut: null,
    characters: 0,
    audio
  };
}

/** One bar of the tokens-over-time chart. */
export interface ITokenBin {
  /** Start of the bin (ms since the epoch). */
  start: number;
  end: number;
  prompt: number;
  completion: number;
  /** Seconds of audio in and out (transcriptions, speech). */
  audio: number;
  requests: number;
}

/**
 * Tokens of the shown records over time: `bins` equal slices from the oldest to the newest
 * record (records without tokens count as requests only; audio counts in seconds, apart).
 * Empty without timed records.
 */
export function tokenSeries(records: IAuditRecord[], bins = 24): ITokenBin[] {
  const timed = records
    .map(r => ({ r, t: Date.parse(r.time) }))
    .filter(({ t }) => !isNaN(t));
  if (!timed.length || bins < 1) {
    return [];
  }
  const first = Math.min(...timed.map(x => x.t));
  const last = Math.max(...timed.map(x => x.t));
  // At least a minute per bin, so a burst of requests is not one bar per millisecond.
  const width = Math.max((last - first) / bins, 60_000 / bins, 1);
  const series: ITokenBin[] = Array.from({ length: bins }, (_, i) => ({
    start: first + i * width,
    end: first + (i + 1) * width,
    prompt: 0,
    completion: 0,
    audio: 0,
    requests: 0
  }));
  for (const { r, t } of timed) {
    const bin = series[Math.min(bins - 1, Math.floor((t - first) / width))];
    const units = usageUnits(r);
    bin.prompt += units.promptTokens;
    bin.completion += units.completionTokens;
    bin.audio += (units.audioIn ?? 0) + (units.audioOut ?? 0);
    bin.requests += 1;
  }
  return series;
}

/** Newest first, no duplicates (the page and the socket can both deliver a record). */
export function auditReducer(
  state: IAuditState,
  action: AuditAction
): IAuditState {
  switch (action.type) {
    case 'page': {
      if (!action.append) {
        return {
          ...state,
          records: action.records.slice(0, MAX_RECORDS),
          total: action.total,
          dropped: 0
        };
      }
      const seen = new Set(state.records.map(r => r.id));
      const more = action.records.filter(r => !seen.has(r.id));
      return {
        ...state,
        records: [...state.records, ...more].slice(0, MAX_RECORDS),
        total: Math.max(action.total, state.total)
      };
    }
    case 'record': {
      const { record, filter } = action;
      if (
        !matchesFilter(record, filter) ||
        state.records.some(r => r.id === record.id)
      ) {
        return state;
      }
      const records = [record, ...state.records]
        .sort((a, b) => b.id - a.id)
        .slice(0, MAX_RECORDS);
      return { ...state, records, total: state.total + 1 };
    }
    case 'gap':
      return {
        ...state,
        dropped: state.dropped + Math.max(0, action.dropped || 0)
      };
    default:
      return state;
  }
}

/** Something WebSocket-like, so tests can pass a fake. */
export interface ISocketLike {
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  close(code?: number, reason?: string): void;
}

export type SocketFactory = (url: string) => ISocketLike;

/** Loads a filtered page of the audit trail and follows it live while started. */
export class AuditFeed {
  readonly store = new Store<IAuditState>(initialAuditState);

  constructor(
    private readonly _settings?: ServerConnection.ISettings,
    factory?: SocketFactory,
    readonly pageSize = 100
  ) {
    this._factory =
      factory ??
      ((url: string) => new WebSocket(url) as unknown as ISocketLike);
  }

  get filter(): IAuditFilter {
    return this._filter;
  }

  /** Start following with these filters (reloads the page; keeps the socket). */
  async start(filter: IAuditFilter = {}): Promise<void> {
    this._filter = { ...filter };
    this._stopped = false;
    if (!this._socket && !this._connecting) {
      void this._connect();
    }
    await this.reload();
  }

  stop(): void {
    this._stopped = true;
    if (this._retry !== null) {
      clearTimeout(this._retry);
      this._retry = null;
    }
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onclose = null;
      socket.close();
    }
    this.store.set({ connection: 'idle' });
  }

  async reload(): Promise<void> {
    const filter = this._filter;
    this.store.set({ loading: true });
    try {
      const page = await getAudit(filter, this.pageSize, 0, this._settings);
      if (filter !== this._filter) {
        return; // the filters changed meanwhile
      }
      this.store.set(s => ({
        ...auditReducer(s, { type: 'page', ...page }),
        loading: false,
        error: null
      }));
    } catch (err) {
      this.store.set({ loading: false, error: toApiError(err) });
    }
  }

  async loadMore(): Promise<void> {
    const filter = this._filter;
    const offset = this.store.state.records.length;
    this.store.set({ loading: true });
    try {
      const page = await getAudit(
        filter,
        this.pageSize,
        offset,
        this._settings
      );
      if (filter !== this._filter) {
        return;
      }
      this.store.set(s => ({
        ...auditReducer(s, { type: 'page', ...page, append: true }),
        loading: false,
        error: null
      }));
    } catch (err) {
      this.store.set({ loading: false, error: toApiError(err) });
    }
  }

  /** Handle one message of the socket (exposed for tests). */
  receive(raw: unknown): void {
    let message: any;
    try {
      message = typeof raw === 'string' ? JSON.parse(raw) : raw;
    } catch {
      return;
    }
    if (message?.type === 'record' && message.data) {
      this.store.set(s =>
        auditReducer(s, {
          type: 'record',
          record: message.data,
          filter: this._filter
        })
      );
    } else if (message?.type === 'gap') {
      this.store.set(s =>
        auditReducer(s, { type: 'gap', dropped: Number(message.dropped) || 0 })
      );
    }
    // {"type": "ping"}: nothing to do
  }

  dispose(): void {
    this.stop();
  }

  private async _connect(): Promise<void> {
    this._connecting = true;
    this.store.set({ connection: this._failures ? 'retrying' : 'connecting' });
    let ticket: string;
    try {
      ticket = await getTicket(this._settings);
    } catch (err) {
      this._connecting = false;
      const error = toApiError(err);
      if (error.isForbidden || error.status === 401) {
        this.store.set({ connection: 'refused', error });
        return;
      }
      this._scheduleRetry();
      return;
    }
    this._connecting = false;
    if (this._stopped) {
      return;
    }
    const socket = this._factory(auditSocketUrl(ticket, 0, this._settings));
    this._socket = socket;
    socket.onopen = () => {
      this.store.set({ connection: 'live' });
      if (this._failures > 0) {
        // Records may have happened while we were away.
        void this.reload();
      }
      this._failures = 0;
    };
    socket.onmessage = ev => this.receive(ev.data);
    socket.onerror = () => undefined; // onclose follows
    socket.onclose = ev => {
      if (this._socket !== socket) {
        return;
      }
      this._socket = null;
      if (this._stopped) {
        return;
      }
      if (ev.code === 1008) {
        this.store.set({
          connection: 'refused',
          error: new ApiError(
            ev.reason || 'The server refused the live activity feed.',
            403,
            'ws_refused'
          )
        });
        return;
      }
      this._scheduleRetry();
    };
  }

  private _scheduleRetry(): void {
    if (this._stopped) {
      return;
    }
    this._failures++;
    this.store.set({ connection: 'retrying' });
    const delay = Math.min(30_000, 1000 * 2 ** Math.min(this._failures - 1, 5));
    this._retry = setTimeout(() => {
      this._retry = null;
      if (!this._stopped) {
        void this._connect();
      }
    }, delay);
  }

  private _filter: IAuditFilter = {};
  private _factory: SocketFactory;
  private _socket: ISocketLike | null = null;
  private _connecting = false;
  private _stopped = true;
  private _failures = 0;
  private _retry: ReturnType<typeof setTimeout> | null = null;
}
