const mockMakeRequest = jest.fn();
const mockSettings = { baseUrl: 'http://h/base/', wsUrl: 'ws://h/base/' };

jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => mockSettings,
    makeRequest: (...args: unknown[]) => mockMakeRequest(...args)
  }
}));

import { MLXService } from '../service';
import { PolledTask } from '../store';

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status });

/** The server: answers every route; `down` makes every request fail as a network error. */
let down = false;
const statusCalls = () =>
  mockMakeRequest.mock.calls.filter(([url]) =>
    String(url).endsWith('mlx/api/status')
  ).length;

beforeEach(() => {
  jest.useFakeTimers();
  down = false;
  mockMakeRequest.mockReset();
  mockMakeRequest.mockImplementation(async (url: string) => {
    if (down) {
      throw new TypeError('Failed to fetch');
    }
    if (url.endsWith('mlx/api/status')) {
      return json(200, {
        version: '0.1.0',
        user: { username: 'u', is_admin: false }
      });
    }
    if (url.endsWith('mlx/api/pool')) {
      return json(200, { models: [], loading: [] });
    }
    if (url.endsWith('mlx/api/models/local')) {
      return json(200, { models: [] });
    }
    if (url.endsWith('mlx/api/downloads')) {
      return json(200, { downloads: [] });
    }
    return json(404, { message: 'no route' });
  });
});

afterEach(() => {
  jest.useRealTimers();
  jest.restoreAllMocks();
});

const advance = (ms: number) => jest.advanceTimersByTimeAsync(ms);
const pollOf = (service: MLXService) =>
  ((service as any)._poller as PolledTask).poll;

describe('MLXService polling', () => {
  it('polls status and pool on a Poll, every refreshInterval seconds', async () => {
    const service = new MLXService();
    service.start();
    await advance(0);
    expect(statusCalls()).toBe(1);
    expect(service.store.state.status?.version).toBe('0.1.0');
    expect(service.store.state.error).toBeNull();
    await advance(5000);
    expect(statusCalls()).toBe(2);

    service.refreshInterval = 0; // on demand only
    await advance(60_000);
    expect(statusCalls()).toBe(2);
    const refreshed = service.refresh();
    await advance(0);
    await refreshed; // resolves once the run is over
    expect(statusCalls()).toBe(3);

    service.refreshInterval = 2;
    await advance(2000);
    expect(statusCalls()).toBe(4);
    service.dispose();
    await advance(60_000);
    expect(statusCalls()).toBe(4);
  });

  it('stores a network error, backs off while the server is down, and recovers', async () => {
    jest.spyOn(Math, 'random').mockReturnValue(0.999999);
    const service = new MLXService();
    service.refreshInterval = 1;
    service.start();
    await advance(0);
    expect(statusCalls()).toBe(1);

    down = true;
    await advance(1000);
    expect(statusCalls()).toBe(2);
    expect(service.store.state.error?.reason).toBe('network');
    expect(service.store.state.loading).toBe(false);
    expect(pollOf(service).state.phase).toBe('rejected');
    const before = statusCalls();
    await advance(120_000);
    // every second would be 120 more requests
    expect(statusCalls() - before).toBeLessThan(20);

    down = false;
    const refreshed = service.refresh(); // the refresh button works while backing off
    await advance(0);
    await refreshed;
    expect(service.store.state.error).toBeNull();
    const after = statusCalls();
    await advance(1000);
    expect(statusCalls()).toBe(after + 1); // back to every second
    service.dispose();
  });

  it('never sends two status requests at once: refresh joins the one in flight', async () => {
    let release: () => void = () => undefined;
    const service = new MLXService();
    mockMakeRequest.mockImplementationOnce(
      () =>
        new Promise(r => (release = () => r(json(200, { version: 'slow' }))))
    );
    service.start();
    await advance(0);
    const first = service.refresh();
    const second = service.refresh();
    await advance(0);
    expect(statusCalls()).toBe(1);
    release();
    await advance(0);
    await Promise.all([first, second]);
    expect(service.store.state.status?.version).toBe('slow');
    service.dispose();
  });
});
