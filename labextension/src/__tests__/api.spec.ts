const mockMakeRequest = jest.fn();
const mockDefaults = {
  baseUrl: 'http://localhost:8888/',
  wsUrl: 'ws://localhost:8888/'
};

jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => mockDefaults,
    makeRequest: (...args: unknown[]) => mockMakeRequest(...args)
  }
}));

import {
  ApiError,
  apiUrl,
  auditExportUrl,
  auditPath,
  auditSocketUrl,
  downloadProgressUrl,
  eventSourceUrl,
  getStatus,
  getTicket,
  listLocalModels,
  loadModel,
  queryString,
  requestAPI,
  searchModelsPath,
  updateUser,
  webSocketUrl
} from '../api';

describe('apiUrl', () => {
  it.each([
    ['http://h:8888/', 'status', 'http://h:8888/mlx/api/status'],
    ['http://h:8888', 'status', 'http://h:8888/mlx/api/status'],
    ['http://h/user/ann/', '/pool', 'http://h/user/ann/mlx/api/pool'],
    [
      'http://h/user/ann',
      'models/local/org/name',
      'http://h/user/ann/mlx/api/models/local/org/name'
    ]
  ])('joins %s and %s', (baseUrl, path, expected) => {
    expect(apiUrl(path, { baseUrl })).toBe(expected);
  });

  it('uses the Jupyter settings by default', () => {
    expect(apiUrl('status')).toBe('http://localhost:8888/mlx/api/status');
  });
});

describe('eventSourceUrl', () => {
  it('adds the ticket as ?token=', () => {
    expect(
      eventSourceUrl('downloads/3/progress', 'abc', {
        baseUrl: 'https://h/base'
      })
    ).toBe('https://h/base/mlx/api/downloads/3/progress?token=abc');
  });

  it('appends to an existing query and encodes the ticket', () => {
    expect(
      eventSourceUrl('audit?limit=5', 'a.b+c/=', { baseUrl: 'http://h/' })
    ).toBe('http://h/mlx/api/audit?limit=5&token=a.b%2Bc%2F%3D');
  });
});

describe('webSocketUrl', () => {
  it.each([
    ['http://h:8888/', 'ws://h:8888/mlx/api/audit/ws?token=t'],
    ['http://h:8888', 'ws://h:8888/mlx/api/audit/ws?token=t'],
    [
      'https://hub.example/user/ann/',
      'wss://hub.example/user/ann/mlx/api/audit/ws?token=t'
    ],
    [
      'HTTPS://hub.example/user/ann',
      'wss://hub.example/user/ann/mlx/api/audit/ws?token=t'
    ]
  ])('derives ws(s) from %s', (baseUrl, expected) => {
    expect(webSocketUrl('audit/ws', 't', { baseUrl })).toBe(expected);
  });

  it("prefers Jupyter's wsUrl when set", () => {
    expect(
      webSocketUrl('/audit/ws', 't', {
        baseUrl: 'https://h/base/',
        wsUrl: 'wss://ws.h/base'
      })
    ).toBe('wss://ws.h/base/mlx/api/audit/ws?token=t');
  });

  it('uses the Jupyter settings by default', () => {
    expect(webSocketUrl('audit/ws', 'x')).toBe(
      'ws://localhost:8888/mlx/api/audit/ws?token=x'
    );
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
      reply(403, {
        message: 'Your account is pending approval',
        reason: 'pending'
      })
    );
    const err = await failure(requestAPI('status'));
    expect(err).toBeInstanceOf(ApiError);
    expect(err.status).toBe(403);
    expect(err.isForbidden).toBe(true);
    expect(err.message).toBe('Your account is pending approval');
    expect(err.reason).toBe('pending');
  });

  it('falls back to the HTTP status when the body is not JSON', async () => {
    mockMakeRequest.mockResolvedValue(
      reply(502, '<html>bad gateway</html>', 'Bad Gateway')
    );
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
    mockMakeRequest.mockResolvedValue(
      reply(200, { token: 'jwt', expires_in: 60 })
    );
    await expect(getTicket()).resolves.toBe('jwt');
    expect(mockMakeRequest.mock.calls[0][0]).toBe(
      'http://localhost:8888/mlx/api/auth/ticket'
    );
    expect(mockMakeRequest.mock.calls[0][1]).toEqual({ method: 'POST' });
  });
});

describe('endpoint URLs', () => {
  const settings = { baseUrl: 'https://hub.example/user/ann/' };

  it('builds query strings from the set values only', () => {
    expect(
      queryString({
        q: 'qwen 2',
        author: '',
        arch: undefined,
        max_size_gb: 4,
        limit: 20
      })
    ).toBe('?q=qwen+2&max_size_gb=4&limit=20');
    expect(queryString({ a: null })).toBe('');
  });

  it('passes the Hub search filters to the server', () => {
    expect(
      searchModelsPath({
        q: 'llama',
        author: 'mlx-community',
        arch: 'llama',
        quant: '4bit',
        max_size_gb: '2.5',
        sort: 'likes',
        limit: 10
      })
    ).toBe(
      'models/search?q=llama&author=mlx-community&arch=llama&quant=4bit&max_size_gb=2.5&sort=likes&limit=10'
    );
  });

  it('puts the ticket on the download progress EventSource URL', () => {
    expect(downloadProgressUrl(12, 'tick.et', settings)).toBe(
      'https://hub.example/user/ann/mlx/api/downloads/12/progress?token=tick.et'
    );
  });

  it('puts the ticket on the audit WebSocket URL, after replay', () => {
    expect(auditSocketUrl('abc', 0, settings)).toBe(
      'wss://hub.example/user/ann/mlx/api/audit/ws?token=abc'
    );
    expect(auditSocketUrl('abc', 50, { baseUrl: 'http://h:8888/' })).toBe(
      'ws://h:8888/mlx/api/audit/ws?replay=50&token=abc'
    );
  });

  it('builds audit query and export URLs with the filters', () => {
    expect(
      auditPath(
        { user: 'bob', status: 'error', since: '2026-01-01T00:00:00Z' },
        50,
        100
      )
    ).toBe(
      'audit?user=bob&status=error&since=2026-01-01T00%3A00%3A00Z&limit=50&offset=100'
    );
    expect(auditPath({}, 100, 0)).toBe('audit?limit=100');
    expect(
      auditExportUrl('csv', { model: 'local/tiny-demo' }, 't', settings)
    ).toBe(
      'https://hub.example/user/ann/mlx/api/audit/export?format=csv&model=local%2Ftiny-demo&token=t'
    );
  });
});

describe('model and user requests', () => {
  beforeEach(() => mockMakeRequest.mockReset());

  it('loads with pin and keep-alive only when given', async () => {
    mockMakeRequest.mockImplementation(() =>
      Promise.resolve(reply(200, { model: 'a/b', status: 'loaded' }))
    );
    await loadModel('a/b');
    await loadModel('a/b', { pin: true, keep_alive: -1 });
    expect(JSON.parse(mockMakeRequest.mock.calls[0][1].body)).toEqual({
      model: 'a/b'
    });
    expect(JSON.parse(mockMakeRequest.mock.calls[1][1].body)).toEqual({
      model: 'a/b',
      pin: true,
      keep_alive: -1
    });
    expect(mockMakeRequest.mock.calls[1][0]).toBe(
      'http://localhost:8888/mlx/api/pool/load'
    );
  });

  it('patches a user', async () => {
    mockMakeRequest.mockResolvedValue(
      reply(200, { id: 3, status: 'approved' })
    );
    await updateUser(3, { status: 'approved' });
    const [url, init] = mockMakeRequest.mock.calls[0];
    expect(url).toBe('http://localhost:8888/mlx/api/users/3');
    expect(init).toEqual({
      method: 'PATCH',
      body: '{"status":"approved"}',
      headers: { 'Content-Type': 'application/json' }
    });
  });

  it('lists local models, falling back to the OpenAI list on 404', async () => {
    mockMakeRequest
      .mockResolvedValueOnce(reply(404, '<html>Not Found</html>', 'Not Found'))
      .mockResolvedValueOnce(
        reply(200, {
          object: 'list',
          data: [{ id: 'local/tiny-demo', loaded: true }]
        })
      );
    await expect(listLocalModels()).resolves.toEqual({
      models: [{ id: 'local/tiny-demo', loaded: true }],
      detailed: false
    });
    expect(mockMakeRequest.mock.calls[1][0]).toBe(
      'http://localhost:8888/mlx/v1/models'
    );

    mockMakeRequest.mockReset();
    mockMakeRequest.mockResolvedValue(
      reply(200, { models: [{ id: 'org/m', architecture: 'llama' }] })
    );
    await expect(listLocalModels()).resolves.toEqual({
      models: [{ id: 'org/m', architecture: 'llama' }],
      detailed: true
    });
  });

  it("reads OpenAI's error envelope too", async () => {
    mockMakeRequest.mockResolvedValue(
      reply(400, {
        error: {
          message: 'bad model',
          type: 'invalid_request_error',
          code: 'invalid_model_id'
        }
      })
    );
    await expect(requestAPI('x')).rejects.toMatchObject({
      status: 400,
      message: 'bad model',
      reason: 'invalid_model_id'
    });
  });

  it('flags a missing endpoint', async () => {
    mockMakeRequest.mockResolvedValue(reply(404, '<html/>', 'Not Found'));
    const err = await failure(requestAPI('models/search'));
    expect(err.isNotFound).toBe(true);
  });
});
