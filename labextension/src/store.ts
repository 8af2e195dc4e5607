/**
 * A tiny observable store and polling on `@lumino/polling`'s `Poll`, shared by the sidebar,
 * the status bar and the chat panel. No React and no JupyterLab imports here (unit-tested in
 * node); the React bindings are in hooks.ts.
 */
import { IPoll, Poll } from '@lumino/polling';

export type Listener = () => void;

/** Holds one immutable state object; `set` replaces it and notifies subscribers. */
export class Store<T extends object> {
  constructor(initial: T) {
    this._state = initial;
  }

  get state(): T {
    return this._state;
  }

  /** Merge a patch (or apply an updater); listeners run only when something changed. */
  set(update: Partial<T> | ((state: T) => T)): void {
    const next =
      typeof update === 'function'
        ? update(this._state)
        : { ...this._state, ...update };
    if (next === this._state || shallowEqual(next, this._state)) {
      return;
    }
    this._state = next;
    for (const listener of [...this._listeners]) {
      listener();
    }
  }

  /** Returns the unsubscribe function (the shape `useSyncExternalStore` wants). */
  subscribe = (listener: Listener): (() => void) => {
    this._listeners.add(listener);
    return () => {
      this._listeners.delete(listener);
    };
  };

  getSnapshot = (): T => this._state;

  private _state: T;
  private _listeners = new Set<Listener>();
}

export function shallowEqual(a: object, b: object): boolean {
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) {
    return false;
  }
  return ka.every(k => Object.is((a as any)[k], (b as any)[k]));
}

/** The end of a polled task that stores its error: reject with it, so the poll backs off. */
export function throwIfFailed(error: unknown): void {
  if (error) {
    throw error;
  }
}

export interface IPolledTaskOptions {
  /** Seconds between runs; 0 or less: only on demand (`refresh()`). */
  interval: number;
  /** The longest wait, in seconds, while the task keeps failing (default 30). */
  maxBackoff?: number;
  /** When to skip scheduled runs (default: while the page is hidden); asked-for runs always happen. */
  standby?: Poll.Standby | (() => boolean | Poll.Standby);
  /** The poll's name (for debugging). */
  name?: string;
}

/** `Poll` frequency for "every `seconds`" (0 or less: never on its own), backing off on errors. */
export function pollFrequency(
  seconds: number,
  maxBackoff = 30
): IPoll.Frequency {
  const interval =
    seconds > 0
      ? Math.min(Math.round(seconds * 1000), Poll.MAX_INTERVAL)
      : Poll.NEVER;
  const max = Math.min(
    Math.max(
      Math.round(maxBackoff * 1000),
      interval === Poll.NEVER ? 0 : interval
    ),
    Poll.MAX_INTERVAL
  );
  return { interval, backoff: true, max };
}

/**
 * An async task run by a `Poll`: now and then every `interval` seconds while started,
 * standing by while the page is hidden, backing off (up to `maxBackoff`) while the task
 * rejects — a task stores its own error for the UI and rejects so the poll slows down.
 * Never two runs at once: a `refresh()` while a run is in flight joins that run.
 */
export class PolledTask {
  constructor(task: () => Promise<unknown>, options: IPolledTaskOptions) {
    this._task = task;
    this._interval = options.interval;
    this._maxBackoff = options.maxBackoff ?? 30;
    const standby = options.standby ?? 'when-hidden';
    this.poll = new Poll({
      auto: false,
      factory: () => this._run(),
      frequency: pollFrequency(options.interval, this._maxBackoff),
      // A run asked for (start, refresh) happens even while hidden; only scheduled ones wait.
      standby: () => {
        const { phase } = this.poll.state;
        if (phase === 'started' || phase === 'refreshed') {
          return false;
        }
        return typeof standby === 'function' ? standby() : standby;
      },
      name: options.name ?? 'jupyter-mlx-manager'
    });
  }

  /** The underlying poll (its `ticked` signal and `state` tell what it does). */
  readonly poll: Poll;

  get interval(): number {
    return this._interval;
  }

  /** A new interval applies at once (not after the wait already scheduled). */
  set interval(seconds: number) {
    if (seconds === this._interval || this.poll.isDisposed) {
      return;
    }
    this._interval = seconds;
    this.poll.frequency = pollFrequency(seconds, this._maxBackoff);
    if (this._running) {
      void this.poll.schedule();
    }
  }

  get running(): boolean {
    return this._running;
  }

  get isDisposed(): boolean {
    return this.poll.isDisposed;
  }

  /** Start polling with an immediate run; resolves once that run is over. */
  async start(): Promise<void> {
    if (this.poll.isDisposed) {
      return;
    }
    if (this._running) {
      return this.refresh();
    }
    this._running = true;
    await this.poll.start();
    await this._ticked();
  }

  stop(): void {
    this._running = false;
    void this.poll.stop();
  }

  /**
   * Run the task now (or join the run in flight); resolves when it is over, never rejects.
   * While started this restarts the interval; while stopped it runs the task once.
   */
  async refresh(): Promise<void> {
    if (this.poll.isDisposed) {
      return;
    }
    if (!this._running) {
      await this._run().catch(() => undefined);
      return;
    }
    await this.poll.refresh();
    await this._ticked();
  }

  dispose(): void {
    this._running = false;
    this.poll.dispose();
  }

  /** The next tick: the one after the run just scheduled (rejects only once disposed). */
  private _ticked(): Promise<unknown> {
    return this.poll.tick.catch(() => undefined);
  }

  private _run(): Promise<unknown> {
    if (!this._inFlight) {
      this._inFlight = (async () => {
        try {
          return await this._task();
        } finally {
          this._inFlight = null;
        }
      })();
    }
    return this._inFlight;
  }

  private _task: () => Promise<unknown>;
  private _interval: number;
  private _maxBackoff: number;
  private _running = false;
  private _inFlight: Promise<unknown> | null = null;
}
