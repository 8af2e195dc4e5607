/**
 * Following progress streams (`EventSource`) authenticated by a ticket, one stream per key.
 * A ticket is short-lived, so each connection asks for a fresh one and EventSource is never
 * left to retry with a spent URL: after an error the stream is closed, the owner lists again
 * (the thing may have ended) and follows again with a new ticket, backing off.
 */
import { ServerConnection } from '@jupyterlab/services';

import { getTicket } from './api';

/** Something EventSource-like, so tests can pass a fake. */
export interface IEventSourceLike {
  onmessage: ((ev: { data: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  addEventListener(
    type: string,
    listener: (ev: { data: string }) => void
  ): void;
  close(): void;
}

export type EventSourceFactory = (url: string) => IEventSourceLike;

/** One stream to follow. */
export interface ITicketStream {
  /** The stream's URL with this connection's ticket. */
  url(ticket: string): string;
  /** Event names to listen to besides the default `message`. */
  events?: string[];
  /** Take one event's JSON; false when it was no update (it does not count as a recovery). */
  receive(data: unknown): boolean;
}

const MAX_RECONNECTS = 5;

export class TicketStreams {
  /**
   * @param relist called (backing off) after a stream broke: list again, then `follow` what
   *   is still running.
   */
  constructor(
    private readonly _settings: ServerConnection.ISettings | undefined,
    factory: EventSourceFactory | undefined,
    private readonly _relist: () => void
  ) {
    this._factory =
      factory ??
      ((url: string) => new EventSource(url) as unknown as IEventSourceLike);
  }

  /** Open `stream` under `key` unless one is open or opening, or it failed too often. */
  follow(key: string, stream: ITicketStream): void {
    if (
      !this._sources.has(key) &&
      !this._opening.has(key) &&
      (this._failures.get(key) ?? 0) <= MAX_RECONNECTS
    ) {
      void this._open(key, stream);
    }
  }

  close(key: string): void {
    const source = this._sources.get(key);
    if (source) {
      source.onmessage = null;
      source.onerror = null;
      source.close();
      this._sources.delete(key);
    }
  }

  dispose(): void {
    this._disposed = true;
    for (const key of [...this._sources.keys()]) {
      this.close(key);
    }
  }

  private async _open(key: string, stream: ITicketStream): Promise<void> {
    this._opening.add(key);
    let ticket: string;
    try {
      ticket = await getTicket(this._settings);
    } catch {
      return; // the next listing tries again
    } finally {
      this._opening.delete(key);
    }
    if (this._disposed || this._sources.has(key)) {
      return;
    }
    const source = this._factory(stream.url(ticket));
    this._sources.set(key, source);
    const handle = (ev: { data: string }) => {
      let data: unknown;
      try {
        data = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (stream.receive(data)) {
        this._failures.delete(key);
      }
    };
    source.onmessage = handle;
    for (const name of stream.events ?? []) {
      source.addEventListener(name, handle);
    }
    source.onerror = () => {
      this.close(key);
      const failures = (this._failures.get(key) ?? 0) + 1;
      this._failures.set(key, failures);
      if (!this._disposed && failures <= MAX_RECONNECTS) {
        setTimeout(this._relist, 500 * 2 ** failures);
      }
    };
  }

  private _factory: EventSourceFactory;
  private _sources = new Map<string, IEventSourceLike>();
  private _opening = new Set<string>();
  private _failures = new Map<string, number>();
  private _disposed = false;
}
