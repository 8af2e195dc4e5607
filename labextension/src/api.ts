/**
 * Talking to the jupyter-mlx-manager server extension.
 *
 * Every request goes through `ServerConnection.makeRequest`, so Jupyter's own
 * cookie, XSRF and token handling applies. SSE and WebSocket endpoints cannot
 * carry headers from a browser: their URLs carry a short-lived ticket
 * (`POST mlx/api/auth/ticket`) as `?token=<ticket>` instead.
 */
import { ServerConnection } from '@jupyterlab/services';

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
}

function withSlash(url: string): string {
  return url.endsWith('/') ? url : url + '/';
}

function apiPath(path: string): string {
  return API_ROOT + path.replace(/^\/+/, '');
}

/** Absolute URL of `path` (relative to `mlx/api/`, with or without a leading slash). */
export function apiUrl(path: string, settings: IUrlSettings = defaultSettings()): string {
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
    settings.baseUrl.replace(/^http(s?):/i, (_m, s: string) => `ws${s.toLowerCase()}:`);
  return addTicket(withSlash(base) + apiPath(path), ticket);
}

function defaultSettings(): ServerConnection.ISettings {
  return ServerConnection.makeSettings();
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
    response = await ServerConnection.makeRequest(apiUrl(path, settings), init, settings);
  } catch (err) {
    throw new ApiError(
      `Cannot reach the Jupyter server (${(err as Error).message || err}).`,
      0,
      'network'
    );
  }
  const text = await response.text();
  let data: any = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const message =
      (data && typeof data.message === 'string' && data.message) ||
      `${response.status} ${response.statusText || 'error'}`.trim();
    const reason = (data && typeof data.reason === 'string' && data.reason) || '';
    throw new ApiError(message, response.status, reason);
  }
  return data as T;
}

export function getStatus(settings?: ServerConnection.ISettings): Promise<IStatus> {
  return requestAPI<IStatus>('status', {}, settings);
}

/** A fresh short-lived ticket for `?token=` on SSE and WebSocket URLs. */
export async function getTicket(settings?: ServerConnection.ISettings): Promise<string> {
  const ticket = await requestAPI<ITicket>('auth/ticket', { method: 'POST' }, settings);
  return ticket.token;
}
