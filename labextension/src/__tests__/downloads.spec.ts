const mockMakeRequest = jest.fn();
const mockSettings = { baseUrl: 'http://h/base/', wsUrl: 'ws://h/base/' };

jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => mockSettings,
    makeRequest: (...args: unknown[]) => mockMakeRequest(...args)
  }
}));

import * as React from 'react';

import { IDownload } from '../api';
import {
  DownloadsModel,
  isActive,
  mergeDownload,
  progressText,
  replaceDownloads
} from '../downloads';
import { DownloadItem } from '../sections/DownloadsSection';
import { FakeEventSource, flush } from './eventsources';

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status });

const record = (over: Partial<IDownload> = {}): IDownload => ({
  id: 1,
  repo_id: 'mlx-community/tiny',
  revision: 'main',
  status: 'running',
  downloaded_bytes: 0,
  total_bytes: 4096,
  files_done: 0,
  files_total: 2,
  error: null,
  created_at: '2026-01-01T00:00:00Z',
  ...over
});

describe('download state', () => {
  it('knows which statuses are still active', () => {
    expect(isActive('queued')).toBe(true);
    expect(isActive('running')).toBe(true);
    expect(isActive('completed')).toBe(false);
    expect(isActive('failed')).toBe(false);
    expect(isActive('cancelled')).toBe(false);
    expect(isActive(undefined)).toBe(false);
  });

  it('merges progress events and never moves a running bar backwards', () => {
    let list = [record()];
    list = mergeDownload(list, {
      id: 1,
      downloaded_bytes: 2048,
      rate_bps: 1024,
      eta_s: 2
    });
    expect(list[0]).toMatchObject({
      downloaded_bytes: 2048,
      rate_bps: 1024,
      eta_s: 2,
      repo_id: 'mlx-community/tiny'
    });
    list = mergeDownload(list, { id: 1, downloaded_bytes: 1024 });
    expect(list[0].downloaded_bytes).toBe(2048);
    list = mergeDownload(list, {
      id: 1,
      status: 'completed',
      downloaded_bytes: 4096
    });
    expect(list[0]).toMatchObject({
      status: 'completed',
      rate_bps: null,
      eta_s: null
    });
  });

  it('adds new downloads newest first and ignores updates of unknown ones without a repo', () => {
    const list = mergeDownload(
      [record()],
      record({ id: 2, created_at: '2026-01-02T00:00:00Z' })
    );
    expect(list.map(d => d.id)).toEqual([2, 1]);
    expect(mergeDownload(list, { id: 9, downloaded_bytes: 5 })).toBe(list);
  });

  it('keeps the live rate when the list is refreshed', () => {
    const current = [record({ rate_bps: 500, eta_s: 7 })];
    const fresh = replaceDownloads(current, [
      record({ downloaded_bytes: 100 })
    ]);
    expect(fresh[0]).toMatchObject({
      downloaded_bytes: 100,
      rate_bps: 500,
      eta_s: 7
    });
  });

  it('describes progress', () => {
    expect(
      progressText(record({ downloaded_bytes: 1024, files_done: 1 }))
    ).toBe('1.0\u00a0KiB of 4.0\u00a0KiB · 25% · 1/2 files');
    expect(
      progressText(
        record({ downloaded_bytes: 0, total_bytes: null, files_total: null })
      )
    ).toBe('');
  });
});

describe('DownloadsModel', () => {
  beforeEach(() => {
    mockMakeRequest.mockReset();
    FakeEventSource.all = [];
  });

  it('follows an active download over SSE with a ticket in the URL', async () => {
    let tickets = 0;
    mockMakeRequest.mockImplementation((url: string, init: RequestInit) => {
      if (url.endsWith('/mlx/api/downloads') && init.method === 'POST') {
        return Promise.resolve(json(202, record({ status: 'queued' })));
      }
      if (url.endsWith('/mlx/api/auth/ticket')) {
        return Promise.resolve(
          json(201, { token: `t${++tickets}`, expires_in: 60 })
        );
      }
      if (url.endsWith('/mlx/api/downloads')) {
        return Promise.resolve(
          json(200, {
            downloads: [record({ status: 'completed', downloaded_bytes: 4096 })]
          })
        );
      }
      return Promise.resolve(json(404, {}));
    });
    const model = new DownloadsModel(
      mockSettings as any,
      url => new FakeEventSource(url)
    );
    const finished = jest.fn();
    model.onFinished = finished;
    await model.start('mlx-community/tiny');
    expect(JSON.parse(mockMakeRequest.mock.calls[0][1].body)).toEqual({
      repo_id: 'mlx-community/tiny'
    });
    await flush();
    expect(FakeEventSource.all).toHaveLength(1);
    const source = FakeEventSource.all[0];
    expect(source.url).toBe(
      'http://h/base/mlx/api/downloads/1/progress?token=t1'
    );

    source.emit({
      ...record(),
      downloaded_bytes: 1024,
      rate_bps: 2048,
      eta_s: 1.5
    });
    expect(model.store.state.downloads[0]).toMatchObject({
      status: 'running',
      downloaded_bytes: 1024,
      eta_s: 1.5
    });
    source.emit(
      { ...record(), status: 'completed', downloaded_bytes: 4096 },
      'progress'
    );
    expect(model.store.state.downloads[0].status).toBe('completed');
    expect(source.closed).toBe(true);
    expect(finished).toHaveBeenCalledTimes(1);
    model.dispose();
  });

  it('reports a server without the downloads API', async () => {
    mockMakeRequest.mockResolvedValue(
      new Response('<html>404</html>', { status: 404, statusText: 'Not Found' })
    );
    const model = new DownloadsModel(
      mockSettings as any,
      url => new FakeEventSource(url)
    );
    await model.refresh();
    expect(model.store.state.available).toBe(false);
    expect(model.store.state.error?.isNotFound).toBe(true);
  });

  it('reconnects with a fresh ticket after an SSE error', async () => {
    jest.useFakeTimers();
    try {
      let tickets = 0;
      mockMakeRequest.mockImplementation((url: string) => {
        if (url.endsWith('/auth/ticket')) {
          return Promise.resolve(
            json(201, { token: `t${++tickets}`, expires_in: 60 })
          );
        }
        return Promise.resolve(json(200, { downloads: [record()] }));
      });
      const model = new DownloadsModel(
        mockSettings as any,
        url => new FakeEventSource(url)
      );
      await model.refresh();
      await flush();
      expect(FakeEventSource.all.map(s => s.url)).toEqual([
        'http://h/base/mlx/api/downloads/1/progress?token=t1'
      ]);
      FakeEventSource.all[0].onerror?.({});
      expect(FakeEventSource.all[0].closed).toBe(true);
      jest.advanceTimersByTime(1000);
      await flush();
      await flush();
      expect(FakeEventSource.all.map(s => s.url)).toEqual([
        'http://h/base/mlx/api/downloads/1/progress?token=t1',
        'http://h/base/mlx/api/downloads/1/progress?token=t2'
      ]);
      model.dispose();
    } finally {
      jest.useRealTimers();
    }
  });
});

describe('a failed download', () => {
  beforeEach(() => {
    mockMakeRequest.mockReset();
    FakeEventSource.all = [];
  });

  it('is retried from its repo and revision, and removed from the list', async () => {
    const failed = record({
      id: 7,
      status: 'failed',
      error: 'Cannot reach the Hub (huggingface.co): no network.'
    });
    const model = new DownloadsModel(
      mockSettings as any,
      url => new FakeEventSource(url)
    );
    mockMakeRequest.mockResolvedValueOnce(json(200, { downloads: [failed] }));
    await model.refresh();

    mockMakeRequest.mockResolvedValueOnce(
      json(201, record({ id: 8, status: 'queued' }))
    );
    mockMakeRequest.mockResolvedValue(
      json(200, { token: 't', expires_in: 60 })
    );
    await model.retry(failed);
    const [url, init] = mockMakeRequest.mock.calls[1];
    expect(url).toBe('http://h/base/mlx/api/downloads');
    expect(JSON.parse(init.body)).toEqual({
      repo_id: 'mlx-community/tiny',
      revision: 'main'
    });

    mockMakeRequest.mockReset();
    mockMakeRequest.mockResolvedValueOnce(json(200, failed));
    await model.remove(7);
    const [removeUrl, removeInit] = mockMakeRequest.mock.calls[0];
    expect(removeUrl).toBe('http://h/base/mlx/api/downloads/7');
    expect(removeInit.method).toBe('DELETE');
    expect(model.store.state.removed).toEqual(['7']);
    model.dispose();
  });

  it('shows its reason, Retry and Remove, and no Cancel', () => {
    const { renderToStaticMarkup } = jest.requireActual<{
      renderToStaticMarkup: (element: React.ReactElement) => string;
    }>('react-dom/server');
    const noop = () => undefined;
    const html = renderToStaticMarkup(
      React.createElement(DownloadItem, {
        download: record({
          status: 'failed',
          error: 'no network',
          total_bytes: 0
        }),
        busy: null,
        onCancel: noop,
        onRetry: noop,
        onRemove: noop
      })
    );
    expect(html).toContain('no network');
    expect(html).toContain('aria-label="Retry download of mlx-community/tiny"');
    expect(html).toContain(
      'aria-label="Remove download of mlx-community/tiny"'
    );
    expect(html).not.toContain('Cancel download');
    expect(html).not.toContain('0 B of');
  });
});
