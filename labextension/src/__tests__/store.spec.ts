import { Poll } from '@lumino/polling';

import { PolledTask, pollFrequency, Store, throwIfFailed } from '../store';

describe('Store', () => {
  it('merges patches and notifies subscribers only on change', () => {
    const store = new Store({ a: 1, b: 'x' });
    const listener = jest.fn();
    const unsubscribe = store.subscribe(listener);
    store.set({ a: 2 });
    expect(store.state).toEqual({ a: 2, b: 'x' });
    store.set({ a: 2 });
    store.set(s => s);
    expect(listener).toHaveBeenCalledTimes(1);
    store.set(s => ({ ...s, b: 'y' }));
    expect(listener).toHaveBeenCalledTimes(2);
    unsubscribe();
    store.set({ a: 3 });
    expect(listener).toHaveBeenCalledTimes(2);
    expect(store.getSnapshot()).toBe(store.state);
  });
});

describe('pollFrequency', () => {
  it('maps seconds to a Poll frequency that backs off on errors', () => {
    expect(pollFrequency(5)).toEqual({
      interval: 5000,
      backoff: true,
      max: 30_000
    });
    expect(pollFrequency(60)).toEqual({
      interval: 60_000,
      backoff: true,
      max: 60_000
    });
    expect(pollFrequency(0).interval).toBe(Poll.NEVER);
    expect(pollFrequency(-1).interval).toBe(Poll.NEVER);
  });
});

describe('throwIfFailed', () => {
  it('rejects only with a stored error', () => {
    expect(() => throwIfFailed(null)).not.toThrow();
    expect(() => throwIfFailed(new Error('down'))).toThrow('down');
  });
});

describe('PolledTask', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => {
    jest.useRealTimers();
    jest.restoreAllMocks();
  });

  const advance = (ms: number) => jest.advanceTimersByTimeAsync(ms);

  /** `start()`/`refresh()` resolve after their run, which the (fake) clock schedules. */
  const settle = async <T>(promise: Promise<T>): Promise<T> => {
    await advance(0);
    return promise;
  };

  it('is a Poll that runs at once, then every interval, and stops', async () => {
    const task = jest.fn().mockResolvedValue(undefined);
    const poller = new PolledTask(task, { interval: 5, standby: 'never' });
    expect(poller.poll).toBeInstanceOf(Poll);
    await settle(poller.start());
    expect(task).toHaveBeenCalledTimes(1);
    expect(poller.running).toBe(true);
    await advance(4999);
    expect(task).toHaveBeenCalledTimes(1);
    await advance(1);
    expect(task).toHaveBeenCalledTimes(2);
    poller.stop();
    await advance(60_000);
    expect(task).toHaveBeenCalledTimes(2);
    expect(poller.poll.state.phase).toBe('stopped');
    poller.dispose();
    expect(poller.isDisposed).toBe(true);
  });

  it('never runs twice at once: refresh joins the run in flight', async () => {
    let resolve: () => void = () => undefined;
    const task = jest.fn(() => new Promise<void>(r => (resolve = r)));
    const poller = new PolledTask(task, { interval: 0, standby: 'never' });
    const started = poller.start();
    await advance(0);
    expect(task).toHaveBeenCalledTimes(1);
    const first = poller.refresh();
    const second = poller.refresh();
    await advance(0);
    expect(task).toHaveBeenCalledTimes(1);
    resolve();
    await settle(Promise.all([started, first, second]));
    const third = poller.refresh();
    await advance(0);
    expect(task).toHaveBeenCalledTimes(2);
    resolve();
    await settle(third);
    // interval 0: nothing more on its own
    await advance(100_000);
    expect(task).toHaveBeenCalledTimes(2);
    poller.dispose();
  });

  it('runs once on refresh while stopped, without starting', async () => {
    const task = jest.fn().mockResolvedValue(undefined);
    const poller = new PolledTask(task, { interval: 1, standby: 'never' });
    await poller.refresh();
    expect(task).toHaveBeenCalledTimes(1);
    await advance(10_000);
    expect(task).toHaveBeenCalledTimes(1);
    expect(poller.running).toBe(false);
    poller.dispose();
  });

  it('backs off while the task rejects, up to maxBackoff, and returns to the interval once it succeeds', async () => {
    jest.spyOn(Math, 'random').mockReturnValue(0.999999); // the longest back-off Poll may pick
    let fail = true;
    const task = jest.fn(async () => {
      if (fail) {
        throw new Error('down');
      }
    });
    const poller = new PolledTask(task, {
      interval: 1,
      maxBackoff: 30,
      standby: 'never'
    });
    await settle(poller.start()); // never rejects
    expect(task).toHaveBeenCalledTimes(1);
    expect(poller.poll.state.phase).toBe('rejected');
    await advance(120_000);
    // every second would be 120 runs; Poll's back-off grows threefold up to 30 s
    const failed = task.mock.calls.length;
    expect(failed).toBeGreaterThan(2);
    expect(failed).toBeLessThan(20);
    expect(poller.poll.state.interval).toBe(30_000);
    fail = false;
    for (let s = 0; s < 30 && task.mock.calls.length === failed; s++) {
      await advance(1000); // the next retry, at most 30 s away
    }
    expect(task).toHaveBeenCalledTimes(failed + 1);
    expect(poller.poll.state.phase).toBe('reconnected');
    await advance(1000);
    expect(task).toHaveBeenCalledTimes(failed + 2); // back to every second
    poller.dispose();
  });

  it('stands by while hidden and follows interval changes at once; 0 polls only on demand', async () => {
    let hidden = true;
    const task = jest.fn().mockResolvedValue(undefined);
    const poller = new PolledTask(task, { interval: 1, standby: () => hidden });
    await settle(poller.start()); // asked for: runs even while hidden
    expect(task).toHaveBeenCalledTimes(1);
    await advance(3000);
    expect(task).toHaveBeenCalledTimes(1);
    await settle(poller.refresh());
    expect(task).toHaveBeenCalledTimes(2);
    hidden = false;
    poller.interval = 10;
    expect(poller.poll.frequency.interval).toBe(10_000);
    await advance(9999);
    expect(task).toHaveBeenCalledTimes(2);
    await advance(1);
    expect(task).toHaveBeenCalledTimes(3);
    poller.interval = 0;
    await advance(100_000);
    expect(task).toHaveBeenCalledTimes(3);
    poller.interval = 2; // from on-demand back to polling, without waiting for a tick
    await advance(2000);
    expect(task).toHaveBeenCalledTimes(4);
    poller.dispose();
    await advance(100_000);
    expect(task).toHaveBeenCalledTimes(4);
  });
});
