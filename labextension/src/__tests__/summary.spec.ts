import { ApiError } from '../api';
import { statusBarText } from '../summary';

jest.mock('@jupyterlab/services', () => ({ ServerConnection: {} }));

const base = {
  status: null,
  pool: null,
  error: null,
  loading: false,
  updated: null
};

describe('statusBarText', () => {
  it('shows loaded models and memory', () => {
    const { text, title } = statusBarText({
      ...base,
      status: { version: '1' },
      pool: {
        models: [{ model: 'local/tiny-demo', memory_bytes: 77615104 } as any],
        limits: { max_memory_bytes: 2 ** 34 },
        memory_used_bytes: 77615104
      }
    });
    expect(text).toBe('MLX: 1 model · 74.0\u00a0MiB');
    expect(title).toContain('local/tiny-demo');
    expect(title).toContain('16.0\u00a0GiB budget');
  });

  it('says when the user waits for approval or the server is down', () => {
    expect(
      statusBarText({ ...base, error: new ApiError('wait', 403, 'pending') })
        .text
    ).toBe('MLX: pending approval');
    expect(
      statusBarText({ ...base, error: new ApiError('down', 0, 'network') }).text
    ).toBe('MLX: offline');
    expect(statusBarText(base).text).toBe('MLX');
  });

  it('counts models being loaded', () => {
    expect(
      statusBarText({
        ...base,
        status: {},
        pool: { models: [], loading: ['a/b'], memory_used_bytes: 0 }
      }).text
    ).toBe('MLX: 0 models · 0\u00a0B · loading 1');
  });
});
