/**
 * Talking to the jupyter-mlx-manager server extension.
 *
 * Every request goes through `ServerConnection.makeRequest`, so Jupyter's own
 * cookie, XSRF and token handling applies. SSE and WebSocket endpoints cannot
 * carry headers from a browser: their URLs carry a short-lived ticket
 * (`POST mlx/api/auth/ticket`) as `?token=<ticket>` instead.
 */
import { ServerConnection } from '@jupyterlab/services';

import type { components } from './generated/openapi';

/** Path of the management API under the server's base URL. */
export const API_ROOT = 'mlx/api/';

/** The part of `ServerConnection.ISettings` that URL building needs. */
export interface IUrlSettings {
  baseUrl: string;
  wsUrl?: string;
}

/** `GET mlx/api/status` reply. Every field may be missing on older servers. */
export interface IStatus {
  version?: string;
  device?: { type?: string; name?: string };
  memory?: {
    total_bytes?: number;
    available_bytes?: number;
    budget_bytes?: number;
  };
  pool?: {
    loaded_models?: number;
    max_loaded_models?: number;
    memory_used_bytes?: number;
    /** Same shape as `GET mlx/api/pool`, where a server sends that instead. */
    models?: unknown[];
    limits?: { max_loaded_models?: number };
  };
  user?: {
    id?: number;
    username?: string;
    status?: string;
    is_admin?: boolean;
    created_at?: string;
  };
}

/** `POST mlx/api/auth/ticket` reply. */
export interface ITicket {
  token: string;
  expires_in: number;
}

/** An error answer of the API (`{"message": ..., "reason": ...}`) or a network failure. */
export class ApiError extends Error {
  constructor(
    message: string,
    /** HTTP status; 0 when the server could not be reached. */
    readonly status: number,
    readonly reason: string = ''
  ) {
    super(message);
    this.name = 'ApiError';
  }

  /** The user exists but an admin has not approved them (or disabled them). */
  get isForbidden(): boolean {
    return this.status === 403;
  }

  get isNetworkError(): boolean {
    return this.status === 0;
  }

  /** The endpoint does not exist on this server (an older or partial install). */
  get isNotFound(): boolean {
    return this.status === 404;
  }
}

/** Any thrown value as an `ApiError` (status -1 when it did not come from the server). */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) {
    return err;
  }
  return new ApiError(err instanceof Error ? err.message : String(err), -1);
}

function withSlash(url: string): string {
  return url.endsWith('/') ? url : url + '/';
}

function apiPath(path: string): string {
  return API_ROOT + path.replace(/^\/+/, '');
}

/** Absolute URL of `path` (relative to `mlx/api/`, with or without a leading slash). */
export function apiUrl(
  path: string,
  settings: IUrlSettings = defaultSettings()
): string {
  return withSlash(settings.baseUrl) + apiPath(path);
}

function addTicket(url: string, ticket: string): string {
  const sep = url.includes('?') ? '&' : '?';
  return `${url}${sep}token=${encodeURIComponent(ticket)}`;
}

/** URL for an `EventSource` on an SSE endpoint, authenticated by a ticket. */
export function eventSourceUrl(
  path: string,
  ticket: string,
  settings: IUrlSettings = defaultSettings()
): string {
  return addTicket(apiUrl(path, settings), ticket);
}

/**
 * ws:// or wss:// URL for a WebSocket endpoint, authenticated by a ticket.
 * Uses Jupyter's `wsUrl` when set, else the base URL with http(s) -> ws(s).
 */
export function webSocketUrl(
  path: string,
  ticket: string,
  settings: IUrlSettings = defaultSettings()
): string {
  const base =
    settings.wsUrl ||
    settings.baseUrl.replace(
      /^http(s?):/i,
      (_m, s: string) => `ws${s.toLowerCase()}:`
    );
  return addTicket(withSlash(base) + apiPath(path), ticket);
}

function defaultSettings(): ServerConnection.ISettings {
  return ServerConnection.makeSettings();
}

/** Where an error body carries its message: ours `{message, reason}`, OpenAI's `{error: {message, code, type}}`. */
function errorDetails(data: any): { message: string; reason: string } {
  if (data && typeof data === 'object') {
    if (typeof data.message === 'string' && data.message) {
      return {
        message: data.message,
        reason: typeof data.reason === 'string' ? data.reason : ''
      };
    }
    const inner = data.error;
    if (
      inner &&
      typeof inner === 'object' &&
      typeof inner.message === 'string'
    ) {
      return {
        message: inner.message,
        reason: String(inner.code || inner.type || '')
      };
    }
  }
  return { message: '', reason: '' };
}

/**
 * `ServerConnection.makeRequest` for any URL of this server, errors turned into `ApiError`.
 * Returns the raw `Response` (ok), for streaming bodies and file downloads.
 */
export async function fetchResponse(
  url: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = defaultSettings()
): Promise<Response> {
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (err) {
    if (init.signal?.aborted) {
      throw err;
    }
    const inner = (err as any)?.cause ?? err;
    throw new ApiError(
      `Cannot reach the Jupyter server (${(inner as Error)?.message || err}).`,
      0,
      'network'
    );
  }
  if (!response.ok) {
    throw await errorFromResponse(response);
  }
  return response;
}

/** An `ApiError` from an error reply (JSON or not). */
export async function errorFromResponse(response: Response): Promise<ApiError> {
  let data: any = null;
  try {
    const text = await response.text();
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  const { message, reason } = errorDetails(data);
  return new ApiError(
    message || `${response.status} ${response.statusText || 'error'}`.trim(),
    response.status,
    reason
  );
}

/**
 * Call the management API and return its JSON reply.
 *
 * Throws `ApiError` with the server's `message` on an error reply, or with
 * status 0 when the server cannot be reached.
 */
export async function requestAPI<T>(
  path: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = defaultSettings()
): Promise<T> {
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(
      apiUrl(path, settings),
      init,
      settings
    );
  } catch (err) {
    throw new ApiError(
      `Cannot reach the Jupyter server (${(err as Error).message || err}).`,
      0,
      'network'
    );
  }
  if (!response.ok) {
    throw await errorFromResponse(response);
  }
  const text = await response.text();
  if (!text) {
    return null as T;
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    return null as T;
  }
}

/** A JSON body (the server refuses anything but application/json with 415). */
export function jsonInit(method: string, body: unknown): RequestInit {
  return {
    method,
    body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' }
  };
}

function postJSON(body: unknown): RequestInit {
  return jsonInit('POST', body);
}

/** A query string from the defined, non-empty values: `{q: 'a b', n: 3}` -> "?q=a+b&n=3". */
export function queryString(
  params: Record<string, string | number | boolean | null | undefined>
): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === '') {
      continue;
    }
    search.append(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

// -- status and identity --------------------------------------------------------------------

export function getStatus(
  settings?: ServerConnection.ISettings
): Promise<IStatus> {
  return requestAPI<IStatus>('status', {}, settings);
}

/** A fresh short-lived ticket for `?token=` on SSE and WebSocket URLs. */
export async function getTicket(
  settings?: ServerConnection.ISettings
): Promise<string> {
  const ticket = await requestAPI<ITicket>(
    'auth/ticket',
    { method: 'POST' },
    settings
  );
  return ticket.token;
}

// -- users (admins) -------------------------------------------------------------------------

export interface IUser {
  id: number;
  username: string;
  status: 'pending' | 'approved' | 'disabled' | string;
  is_admin: boolean;
  created_at?: string;
}

export async function listUsers(
  settings?: ServerConnection.ISettings
): Promise<IUser[]> {
  const reply = await requestAPI<{ users: IUser[] }>('users', {}, settings);
  return reply?.users ?? [];
}

export function updateUser(
  id: number,
  change: { status?: string; is_admin?: boolean },
  settings?: ServerConnection.ISettings
): Promise<IUser> {
  return requestAPI<IUser>(`users/${id}`, jsonInit('PATCH', change), settings);
}

// -- pool -----------------------------------------------------------------------------------

export interface IPoolModel {
  model: string;
  status: string;
  pinned: boolean;
  /** Seconds; negative = forever. */
  keep_alive: number;
  expires_at: string | null;
  memory_bytes: number;
  /** The prompt cache's share of `memory_bytes` (trimmed before models are evicted). */
  prompt_cache_bytes?: number | null;
  pid?: number | null;
  loaded_at?: string | null;
  last_used?: string | null;
  requests?: number;
  in_flight?: number;
  context_length?: number | null;
  tool_calling?: boolean;
  /** text, vision, embedding, transcription or speech. */
  kind?: ModelKind | null;
}

export interface IPool {
  models: IPoolModel[];
  loading?: string[];
  limits?: {
    max_memory_bytes?: number;
    max_loaded_models?: number;
    default_keep_alive?: number;
  };
  memory_used_bytes?: number;
}

export function getPool(settings?: ServerConnection.ISettings): Promise<IPool> {
  return requestAPI<IPool>('pool', {}, settings);
}

export interface ILoadOptions {
  pin?: boolean;
  /** Seconds; negative = forever; undefined = the server's default. */
  keep_alive?: number;
}

/** Load a model, or change `pin` / `keep_alive` of a loaded one. */
export function loadModel(
  model: string,
  options: ILoadOptions = {},
  settings?: ServerConnection.ISettings
): Promise<IPoolModel> {
  const body: Record<string, unknown> = { model };
  if (options.pin !== undefined) {
    body.pin = options.pin;
  }
  if (options.keep_alive !== undefined) {
    body.keep_alive = options.keep_alive;
  }
  return requestAPI<IPoolModel>('pool/load', postJSON(body), settings);
}

export function unloadModel(
  model: string,
  settings?: ServerConnection.ISettings
): Promise<unknown> {
  return requestAPI('pool/unload', postJSON({ model }), settings);
}

// -- models ---------------------------------------------------------------------------------

/** A local model (`mlx/api/models/local`). Characteristics beyond `id` may be missing. */
/** `{bits, group_size, mode}` on this server; a plain string is accepted too. */
export type Quantization =
  { bits: number; group_size?: number | null; mode?: string } | string | null;

/** What a model does: the server's one kind registry (models/kinds.py), through the OpenAPI
 * document; the Hub's kind may be unknown (null). */
export type ModelKind = components['schemas']['ModelKind'];

export interface ILocalModel {
  id: string;
  loaded?: boolean;
  downloading?: boolean;
  kind?: ModelKind | null;
  /** Why this server cannot serve it (the wheel extra to install); null when it can. */
  unavailable?: string | null;
  /** e.g. "llama" */
  model_type?: string | null;
  /** e.g. "LlamaForCausalLM" */
  architecture?: string | null;
  dtype?: string | null;
  quantization?: Quantization;
  parameters?: number | string | null;
  size_bytes?: number | null;
  /** What the pool will count for it once loaded (newer servers). */
  memory_estimate_bytes?: number | null;
  /** A demo model with random weights (newer servers; else told by its id). */
  demo?: boolean;
  context_length?: number | null;
  tool_calling?: boolean;
  [key: string]: unknown;
}

/** A Hub search result (`mlx/api/models/search`). */
export interface IHubModel {
  id: string;
  downloads?: number | null;
  likes?: number | null;
  size_bytes?: number | null;
  architecture?: string | null;
  quantization?: Quantization;
  parameters?: number | string | null;
  tags?: string[];
  /** From the Hub's pipeline tag and library; null when unknown. */
  kind?: ModelKind | null;
  local?: boolean;
  gated?: boolean;
}

export interface ISearchQuery {
  q?: string;
  author?: string;
  arch?: string;
  quant?: string;
  max_size_gb?: number | string;
  sort?: string;
  limit?: number;
  /** Only models of this kind; empty = any. */
  kind?: ModelKind | '';
}

export function searchModelsPath(query: ISearchQuery): string {
  return 'models/search' + queryString({ ...query });
}

export async function searchModels(
  query: ISearchQuery,
  settings?: ServerConnection.ISettings
): Promise<IHubModel[]> {
  const reply = await requestAPI<{ models: IHubModel[] }>(
    searchModelsPath(query),
    {},
    settings
  );
  return reply?.models ?? [];
}

/**
 * Local models with their characteristics. Where the server has no `models/local` yet
 * (404), falls back to the OpenAI model list (ids and `loaded` only); `detailed` says which.
 */
export async function listLocalModels(
  settings?: ServerConnection.ISettings
): Promise<{ models: ILocalModel[]; detailed: boolean }> {
  try {
    const reply = await requestAPI<{ models: ILocalModel[] }>(
      'models/local',
      {},
      settings
    );
    return { models: reply?.models ?? [], detailed: true };
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 404) {
      throw err;
    }
  }
  const s = settings ?? defaultSettings();
  const response = await fetchResponse(
    withSlash(s.baseUrl) + 'mlx/v1/models',
    {},
    s
  );
  const data = await response.json();
  const models = ((data?.data ?? []) as any[]).map(m => ({
    id: String(m.id),
    loaded: !!m.loaded
  }));
  return { models, detailed: false };
}

// -- downloads ------------------------------------------------------------------------------

export interface IDownload {
  id: number | string;
  repo_id: string;
  revision?: string | null;
  status: string;
  downloaded_bytes?: number | null;
  total_bytes?: number | null;
  files_done?: number | null;
  files_total?: number | null;
  error?: string | null;
  created_at?: string;
  /** Only on SSE progress events. */
  rate_bps?: number | null;
  eta_s?: number | null;
}

export async function listDownloads(
  settings?: ServerConnection.ISettings
): Promise<IDownload[]> {
  const reply = await requestAPI<{ downloads: IDownload[] } | IDownload[]>(
    'downloads',
    {},
    settings
  );
  if (Array.isArray(reply)) {
    return reply;
  }
  return reply?.downloads ?? [];
}

export function startDownload(
  repoId: string,
  revision?: string,
  settings?: ServerConnection.ISettings
): Promise<IDownload> {
  const body: Record<string, string> = { repo_id: repoId };
  if (revision) {
    body.revision = revision;
  }
  return requestAPI<IDownload>('downloads', postJSON(body), settings);
}

export function cancelDownload(
  id: number | string,
  settings?: ServerConnection.ISettings
): Promise<unknown> {
  return requestAPI(
    `downloads/${encodeURIComponent(String(id))}`,
    { method: 'DELETE' },
    settings
  );
}

/** SSE URL of one download's progress, with its ticket. */
export function downloadProgressUrl(
  id: number | string,
  ticket: string,
  settings?: IUrlSettings
): string {
  return eventSourceUrl(
    `downloads/${encodeURIComponent(String(id))}/progress`,
    ticket,
    settings
  );
}

// -- audit ----------------------------------------------------------------------------------

export interface IAuditRecord {
  id: number;
  request_id?: string;
  time: string;
  user: string | null;
  client?: string | null;
  action: string;
  endpoint?: string | null;
  model?: string | null;
  status: string;
  prompt_tokens?: number | null;
  cached_tokens?: number | null;
  completion_tokens?: number | null;
  ttft_ms?: number | null;
  duration_ms?: number | null;
  /** Seconds of audio in (transcriptions) or out (speech), on newer servers. */
  audio_seconds?: number | null;
  error_type?: string | null;
  /** Path of the notebook whose kernel (or editor) made the request, from the server's sessions. */
  notebook?: string | null;
  kernel_id?: string | null;
  cell_id?: string | null;
}

export interface IAuditFilter {
  user?: string;
  model?: string;
  status?: string;
  notebook?: string;
  since?: string;
  until?: string;
}

/** What `mlx/api/audit/stats?group_by=` groups by. */
export type AuditGroupBy = 'notebook' | 'user' | 'model';

/** One group of `mlx/api/audit/stats?group_by=…`: the inference requests of one key. */
export interface IAuditGroup {
  /** The notebook path, user or model; null gathers requests without one. */
  key: string | null;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  duration_ms: number;
  /** Seconds of audio in and out (newer servers). */
  audio_seconds?: number;
}

export function auditGroupsPath(
  groupBy: AuditGroupBy,
  filter: IAuditFilter = {}
): string {
  return 'audit/stats' + queryString({ ...filter, group_by: groupBy });
}

export async function getAuditGroups(
  groupBy: AuditGroupBy,
  filter: IAuditFilter = {},
  settings?: ServerConnection.ISettings
): Promise<IAuditGroup[]> {
  const reply = await requestAPI<{ groups: IAuditGroup[] }>(
    auditGroupsPath(groupBy, filter),
    {},
    settings
  );
  return reply?.groups ?? [];
}

export function auditPath(
  filter: IAuditFilter,
  limit = 100,
  offset = 0
): string {
  return (
    'audit' + queryString({ ...filter, limit, offset: offset || undefined })
  );
}

export function getAudit(
  filter: IAuditFilter,
  limit = 100,
  offset = 0,
  settings?: ServerConnection.ISettings
): Promise<{ records: IAuditRecord[]; total: number }> {
  return requestAPI(auditPath(filter, limit, offset), {}, settings);
}

/** WebSocket URL of the live audit feed, with its ticket. */
export function auditSocketUrl(
  ticket: string,
  replay = 0,
  settings?: IUrlSettings
): string {
  return webSocketUrl(
    'audit/ws' + queryString({ replay: replay || undefined }),
    ticket,
    settings
  );
}

/** Download URL of an audit export (`format` jsonl or csv) with the given filters and ticket. */
export function auditExportUrl(
  format: 'jsonl' | 'csv',
  filter: IAuditFilter,
  ticket: string,
  settings?: IUrlSettings
): string {
  return eventSourceUrl(
    'audit/export' + queryString({ format, ...filter }),
    ticket,
    settings
  );
}
