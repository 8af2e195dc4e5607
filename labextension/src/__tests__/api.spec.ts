const mockMakeRequest = jest.fn();
const mockDefaults = { baseUrl: 'http://localhost:8888/', wsUrl: 'ws://localhost:8888/' };

jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => mockDefaults,
    makeRequest: (...args: unknown[]) => mockMakeRequest(...args)
  }
}));

import {
  ApiError,
  apiUrl,
  eventSourceUrl,
  getStatus,
  getTicket,
  requestAPI,
  webSocketUrl
} from '../api';
import { formatBytes } from '../format';

describe('apiUrl', () => {
  it.each([
    ['http://h:8888/', 'status', 'http://h:8888/mlx/api/status'],
    ['http://h:8888', 'status', 'http://h:8888/mlx/api/status'],
    ['http://h/user/ann/', '/pool', 'http://h/user/ann/mlx/api/pool'],
    ['http://h/user/ann', 'models/local/org/name', 'http://h/user/ann/mlx/api/models/local/org/name']
  ])('joins %s and %s', (baseUrl, path, expected) => {
    expect(apiUrl(path, { baseUrl })).toBe(expected);
  });

  it('uses the Jupyter settings by default', () => {
    expect(apiUrl('status')).toBe('http://localhost:8888/mlx/api/status');
  });
});

describe('eventSourceUrl', () => {
  it('adds the ticket as ?token=', () => {
    expect(eventSourceUrl('downloads/3/progress', 'abc', { baseUrl: 'https://h/base' })).toBe(
      'https://h/base/mlx/api/downloads/3/progress?token=abc'
    );
  });

  it('appends to an existing query and encodes the ticket', () => {
    expect(eventSourceUrl('audit?limit=5', 'a.b+c/=', { baseUrl: 'http://h/' })).toBe(
      'http://h/mlx/api/audit?limit=5&token=a.b%2Bc%2F%3D'
    );
  });
});

describe('webSocketUrl', () => {
  it.each([
    ['http://h:8888/', 'ws://h:8888/mlx/api/audit/ws?token=t'],
    ['http://h:8888', 'ws://h:8888/mlx/api/audit/ws?token=t'],
    ['https://hub.example/user/ann/', 'wss://hub.example/user/ann/mlx/api/audit/ws?token=t'],
    ['HTTPS://hub.example/user/ann', 'wss://hub.example/user/ann/mlx/api/audit/ws?token=t']
  ])('derives ws(s) from %s', (baseUrl, expected) => {
    expect(webSocketUrl('audit/ws', 't', { baseUrl })).toBe(expected);
  });

  it("prefers Jupyter's wsUrl when set", () => {
    expect(
      webSocketUrl('/audit/ws', 't', { baseUrl: 'https://h/base/', wsUrl: 'wss://ws.h/base' })
    ).toBe('wss://ws.h/base/mlx/api/audit/ws?token=t');
  });

  it('uses the Jupyter settings by default', () => {
    expect(webSocketUrl('audit/ws', 'x')).toBe('ws://localhost:8888/mlx/api/audit/ws?token=x');
  });
});

function reply(status: number, body: unknown, statusText = ''): Response {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  return new Response(text, { status, statusText });
}

async function failure(promise: Promise<unknown>): Promise<ApiError> {
  try {
    await promise;
  } catch (err) {
    return err as ApiError;
  }
  throw new Error('expected a rejection');
}

describe('requestAPI', () => {
  beforeEach(() => mockMakeRequest.mockReset());

  it('returns the JSON body through ServerConnection.makeRequest', async () => {
    mockMakeRequest.mockResolvedValue(reply(200, { version: '0.1.0' }));
    await expect(getStatus()).resolves.toEqual({ version: '0.1.0' });
    expect(mockMakeRequest).toHaveBeenCalledWith(
      'http://localhost:8888/mlx/api/status',
      {},
      mockDefaults
    );
  });

  it('raises the server message on 403', async () => {
    mockMakeRequest.mockResolvedValue(
      reply(403, { message: 'Your account is pending approval', reason: 'pending' })
    );
    const err = await failure(requestAPI('status'));
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(403);
    expect(err.isForbidden).toBe(true);
    expect(err.message).toBe('Your account is pending approval');
    expect(err.reason).toBe('pending');
  });

  it('falls back to the HTTP status when the body is not JSON', async () => {
    mockMakeRequest.mockResolvedValue(reply(502, '<html>bad gateway</html>', 'Bad Gateway'));
    await expect(requestAPI('status')).rejects.toMatchObject({
      status: 502,
      message: '502 Bad Gateway'
    });
  });

  it('reports an unreachable server as status 0', async () => {
    mockMakeRequest.mockRejectedValue(new TypeError('Failed to fetch'));
    const err = await failure(requestAPI('status'));
    expect(err.isNetworkError).toBe(true);
    expect(err.message).toContain('Cannot reach the Jupyter server');
  });

  it('gets a ticket with POST', async () => {
    mockMakeRequest.mockResolvedValue(reply(200, { token: 'jwt', expires_in: 60 }));
    await expect(getTicket()).resolves.toBe('jwt');
    expect(mockMakeRequest.mock.calls[0][0]).toBe('http://localhost:8888/mlx/api/auth/ticket');
    expect(mockMakeRequest.mock.calls[0][1]).toEqual({ method: 'POST' });
  });
});

describe('formatBytes', () => {
  it.each([
    [0, '0\u00a0B'],
    [1023, '1023\u00a0B'],
    [1536, '1.5\u00a0KiB'],
    [25000000000, '23.3\u00a0GiB'],
    [undefined, '—'],
    [-1, '—']
  ])('%s -> %s', (bytes, expected) => {
    expect(formatBytes(bytes as number | undefined)).toBe(expected);
  });
});
