/**
 * A tiny observable store and a polling helper, shared by the sidebar, the status bar and
 * the chat panel. No React and no Jupyter imports here (unit-tested in node); the React
 * bindings are in hooks.ts.
 */

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
      typeof update === 'function' ? update(this._state) : { ...this._state, ...update };
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

export interface IPollerOptions {
  /** Seconds between runs; 0 or less: only on demand (`refresh()`). */
  interval: number;
  /** Skip scheduled runs while this returns true (default: the browser tab is hidden). */
  standby?: () => boolean;
}

function documentHidden(): boolean {
  return typeof document !== 'undefined' && document.visibilityState === 'hidden';
}

/**
 * Runs an async task now and then every `interval` seconds, never two at once: a
 * `refresh()` while a run is in flight returns that run's promise. Errors are the task's
 * business (it should store them); a rejected task does not stop the poller.
 */
export class Poller {
  constructor(
    private readonly _task: () => Promise<unknown>,
    options: IPollerOptions
  ) {
    this._interval = options.interval;
    this._standby = options.standby ?? documentHidden;
  }

  get interval(): number {
    return this._interval;
  }

  set interval(seconds: number) {
    if (seconds === this._interval) {
      return;
    }
    this._interval = seconds;
    if (this._running) {
      this._schedule();
    }
  }

  get running(): boolean {
    return this._running;
  }

  /** Start polling with an immediate run. */
  start(): Promise<void> {
    this._running = true;
    return this.refresh();
  }

  stop(): void {
    this._running = false;
    this._clear();
  }

  /** Run the task now (or join the run in flight) and restart the interval. */
  refresh(): Promise<void> {
    if (!this._inFlight) {
      this._inFlight = (async () => {
        try {
          await this._task();
        } catch {
          // the task reports its own errors
        } finally {
          this._inFlight = null;
        }
      })();
    }
    if (this._running) {
      this._schedule();
    }
    return this._inFlight;
  }

  dispose(): void {
    this.stop();
  }

  private _schedule(): void {
    this._clear();
    if (!this._running || !(this._interval > 0)) {
      return;
    }
    this._timer = setTimeout(() => {
      this._timer = null;
      if (!this._running) {
        return;
      }
      if (this._standby()) {
        this._schedule();
        return;
      }
      void this.refresh();
    }, this._interval * 1000);
  }

  private _clear(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _interval: number;
  private _standby: () => boolean;
  private _running = false;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _inFlight: Promise<void> | null = null;
}
