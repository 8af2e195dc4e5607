/**
 * React bindings for store.ts: subscribe to a `Store`, poll while a section is shown.
 */
import * as React from 'react';

import { Poller, Store } from './store';

/** The store's current state; re-renders on every change. */
export function useStore<T extends object>(store: Store<T>): T {
  return React.useSyncExternalStore(store.subscribe, store.getSnapshot);
}

/**
 * Run `task` now and every `interval` seconds while `active`; returns a function that
 * runs it at once (e.g. after an action). The latest `task` is always the one called.
 */
export function usePoll(task: () => Promise<unknown>, interval: number, active = true): () => Promise<void> {
  const latest = React.useRef(task);
  latest.current = task;
  const poller = React.useMemo(() => new Poller(() => latest.current(), { interval }), []);
  React.useEffect(() => {
    poller.interval = interval;
  }, [poller, interval]);
  React.useEffect(() => {
    if (!active) {
      return;
    }
    void poller.start();
    return () => poller.stop();
  }, [poller, active]);
  React.useEffect(() => () => poller.dispose(), [poller]);
  return React.useCallback(() => poller.refresh(), [poller]);
}

/**
 * State for one async action (a button): `run` marks it busy, stores its error, and
 * ignores clicks while busy.
 */
export function useAction(): {
  busy: string | null;
  error: Error | null;
  run: (key: string, action: () => Promise<unknown>) => Promise<void>;
  clear: () => void;
} {
  const [busy, setBusy] = React.useState<string | null>(null);
  const [error, setError] = React.useState<Error | null>(null);
  const mounted = React.useRef(true);
  React.useEffect(
    () => () => {
      mounted.current = false;
    },
    []
  );
  const run = React.useCallback(async (key: string, action: () => Promise<unknown>) => {
    setBusy(key);
    setError(null);
    try {
      await action();
    } catch (err) {
      if (mounted.current) {
        setError(err instanceof Error ? err : new Error(String(err)));
      }
    } finally {
      if (mounted.current) {
        setBusy(null);
      }
    }
  }, []);
  const clear = React.useCallback(() => setError(null), []);
  return { busy, error, run, clear };
}
