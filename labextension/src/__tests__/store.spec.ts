import { Poller, Store } from '../store';

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

describe('Poller', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  const flush = async () => {
    for (let i = 0; i < 5; i++) {
      await Promise.resolve();
    }
  };

  it('runs at once, then every interval, and stops', async () => {
    const task = jest.fn().mockResolvedValue(undefined);
    const poller = new Poller(task, { interval: 5, standby: () => false });
    await poller.start();
    expect(task).toHaveBeenCalledTimes(1);
    jest.advanceTimersByTime(4999);
    expect(task).toHaveBeenCalledTimes(1);
    jest.advanceTimersByTime(1);
    await flush();
    expect(task).toHaveBeenCalledTimes(2);
    poller.stop();
    jest.advanceTimersByTime(60_000);
    expect(task).toHaveBeenCalledTimes(2);
  });

  it('never runs twice at once: refresh joins the run in flight', async () => {
    let resolve: () => void = () => undefined;
    const task = jest.fn(() => new Promise<void>(r => (resolve = r)));
    const poller = new Poller(task, { interval: 0 });
    const first = poller.refresh();
    const second = poller.refresh();
    expect(task).toHaveBeenCalledTimes(1);
    resolve();
    await Promise.all([first, second]);
    const third = poller.refresh();
    expect(task).toHaveBeenCalledTimes(2);
    resolve();
    await third;
  });

  it('keeps polling after a failed run', async () => {
    const task = jest.fn().mockRejectedValueOnce(new Error('down')).mockResolvedValue(undefined);
    const poller = new Poller(task, { interval: 1, standby: () => false });
    await poller.start();
    jest.advanceTimersByTime(1000);
    await flush();
    expect(task).toHaveBeenCalledTimes(2);
    poller.stop();
  });

  it('skips runs in standby and follows interval changes; 0 polls only on demand', async () => {
    let hidden = true;
    const task = jest.fn().mockResolvedValue(undefined);
    const poller = new Poller(task, { interval: 1, standby: () => hidden });
    await poller.start();
    jest.advanceTimersByTime(3000);
    await flush();
    expect(task).toHaveBeenCalledTimes(1);
    hidden = false;
    poller.interval = 10;
    jest.advanceTimersByTime(9999);
    await flush();
    expect(task).toHaveBeenCalledTimes(1);
    jest.advanceTimersByTime(1);
    await flush();
    expect(task).toHaveBeenCalledTimes(2);
    poller.interval = 0;
    jest.advanceTimersByTime(100_000);
    await flush();
    expect(task).toHaveBeenCalledTimes(2);
    poller.dispose();
  });
});
