/**
 * React bindings for store.ts: subscribe to a `Store`, poll while a section is shown.
 */
import * as React from 'react';

import { PolledTask, Store } from './store';

/** The store's current state; re-renders on every change. */
export function useStore<T extends object>(store: Store<T>): T {
  return React.useSyncExternalStore(store.subscribe, store.getSnapshot);
}

/**
 * Run `task` now and every `interval` seconds while `active` (a `PolledTask`: standby while
 * the page is hidden, back-off while the task rejects); returns a function that runs it at
 * once (e.g. after an action). The latest `task` is always the one called.
 */
export function usePoll(
  task: () => Promise<unknown>,
  interval: number,
  active = true
): () => Promise<void> {
  const latest = React.useRef(task);
  latest.current = task;
  const initialInterval = React.useRef(interval);
  const poller = React.useRef<PolledTask | null>(null);
  // Created in an effect (not a memo) so that a disposed poll is never reused.
  React.useEffect(() => {
    const poll = new PolledTask(() => latest.current(), {
      interval: initialInterval.current
    });
    poller.current = poll;
    return () => {
      poll.dispose();
      if (poller.current === poll) {
        poller.current = null;
      }
    };
  }, []);
  React.useEffect(() => {
    initialInterval.current = interval;
    if (poller.current) {
      poller.current.interval = interval;
    }
  }, [interval]);
  React.useEffect(() => {
    const poll = poller.current;
    if (!active || !poll) {
      return;
    }
    void poll.start();
    return () => poll.stop();
  }, [active]);
  return React.useCallback(
    () =>
      poller.current
        ? poller.current.refresh()
        : latest.current().then(
            () => undefined,
            () => undefined
          ),
    []
  );
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
  const run = React.useCallback(
    async (key: string, action: () => Promise<unknown>) => {
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
    },
    []
  );
  const clear = React.useCallback(() => setError(null), []);
  return { busy, error, run, clear };
}
