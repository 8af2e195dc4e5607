const mockMakeRequest = jest.fn();
const mockSettings = { baseUrl: 'https://hub.example/user/ann/', wsUrl: '' };

jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => mockSettings,
    makeRequest: (...args: unknown[]) => mockMakeRequest(...args)
  }
}));

import { IAuditRecord } from '../api';
import {
  AuditFeed,
  auditReducer,
  initialAuditState,
  ISocketLike,
  matchesFilter,
  MAX_RECORDS
} from '../audit';

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status });

const rec = (id: number, over: Partial<IAuditRecord> = {}): IAuditRecord => ({
  id,
  time: `2026-01-01T00:00:${String(id % 60).padStart(2, '0')}Z`,
  user: 'ann',
  action: 'chat.completions',
  model: 'local/tiny-demo',
  status: 'ok',
  ...over
});

class FakeSocket implements ISocketLike {
  static all: FakeSocket[] = [];
  onopen: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  closed = false;
  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }
  close(): void {
    this.closed = true;
  }
}

const flush = async () => {
  for (let i = 0; i < 10; i++) {
    await Promise.resolve();
  }
};

describe('audit reducer', () => {
  it('matches filters', () => {
    expect(matchesFilter(rec(1), {})).toBe(true);
    expect(
      matchesFilter(rec(1), {
        user: 'ann',
        model: 'local/tiny-demo',
        status: 'ok'
      })
    ).toBe(true);
    expect(matchesFilter(rec(1), { user: 'bob' })).toBe(false);
    expect(matchesFilter(rec(1, { status: 'error' }), { status: 'ok' })).toBe(
      false
    );
    expect(matchesFilter(rec(5), { since: '2026-01-01T00:00:10Z' })).toBe(
      false
    );
    expect(matchesFilter(rec(5), { until: '2026-01-01T00:00:10Z' })).toBe(true);
  });

  it('puts live records first, once, and counts them', () => {
    let s = auditReducer(initialAuditState, {
      type: 'page',
      records: [rec(2), rec(1)],
      total: 2
    });
    s = auditReducer(s, { type: 'record', record: rec(3), filter: {} });
    s = auditReducer(s, { type: 'record', record: rec(3), filter: {} });
    s = auditReducer(s, {
      type: 'record',
      record: rec(4, { user: 'bob' }),
      filter: { user: 'ann' }
    });
    expect(s.records.map(r => r.id)).toEqual([3, 2, 1]);
    expect(s.total).toBe(3);
  });

  it('appends older pages without duplicates, caps the list and counts gaps', () => {
    let s = auditReducer(initialAuditState, {
      type: 'page',
      records: [rec(3), rec(2)],
      total: 4
    });
    s = auditReducer(s, {
      type: 'page',
      records: [rec(2), rec(1)],
      total: 4,
      append: true
    });
    expect(s.records.map(r => r.id)).toEqual([3, 2, 1]);
    const many = Array.from({ length: MAX_RECORDS + 10 }, (_, i) =>
      rec(MAX_RECORDS + 10 - i)
    );
    expect(
      auditReducer(s, { type: 'page', records: many, total: many.length })
        .records
    ).toHaveLength(MAX_RECORDS);
    s = auditReducer(s, { type: 'gap', dropped: 4 });
    s = auditReducer(s, { type: 'gap', dropped: 2 });
    expect(s.dropped).toBe(6);
  });
});

describe('AuditFeed', () => {
  beforeEach(() => {
    mockMakeRequest.mockReset();
    FakeSocket.all = [];
  });

  function serve(): void {
    let tickets = 0;
    mockMakeRequest.mockImplementation((url: string) => {
      if (url.endsWith('/mlx/api/auth/ticket')) {
        return Promise.resolve(
          json(201, { token: `ticket-${++tickets}`, expires_in: 60 })
        );
      }
      if (url.includes('/mlx/api/audit?')) {
        return Promise.resolve(json(200, { records: [rec(1)], total: 1 }));
      }
      return Promise.resolve(json(404, {}));
    });
  }

  it('loads a filtered page and follows the WebSocket with a ticket', async () => {
    serve();
    const feed = new AuditFeed(mockSettings as any, url => new FakeSocket(url));
    await feed.start({ model: 'local/tiny-demo', status: 'ok' });
    await flush();
    const pageUrl = mockMakeRequest.mock.calls
      .map(c => c[0])
      .find((u: string) => u.includes('/audit?'));
    expect(pageUrl).toBe(
      'https://hub.example/user/ann/mlx/api/audit?model=local%2Ftiny-demo&status=ok&limit=100'
    );
    expect(FakeSocket.all).toHaveLength(1);
    const socket = FakeSocket.all[0];
    expect(socket.url).toBe(
      'wss://hub.example/user/ann/mlx/api/audit/ws?token=ticket-1'
    );
    socket.onopen?.({});
    expect(feed.store.state.connection).toBe('live');
    socket.onmessage?.({
      data: JSON.stringify({ type: 'record', data: rec(2) })
    });
    socket.onmessage?.({
      data: JSON.stringify({
        type: 'record',
        data: rec(3, { status: 'error' })
      })
    });
    socket.onmessage?.({ data: JSON.stringify({ type: 'ping' }) });
    socket.onmessage?.({ data: JSON.stringify({ type: 'gap', dropped: 3 }) });
    socket.onmessage?.({ data: 'garbage' });
    expect(feed.store.state.records.map(r => r.id)).toEqual([2, 1]);
    expect(feed.store.state.dropped).toBe(3);
    feed.stop();
    expect(socket.closed).toBe(true);
    expect(feed.store.state.connection).toBe('idle');
  });

  it('stops retrying when the server closes with 1008', async () => {
    serve();
    const feed = new AuditFeed(mockSettings as any, url => new FakeSocket(url));
    await feed.start();
    await flush();
    FakeSocket.all[0].onclose?.({
      code: 1008,
      reason: 'your account has been disabled'
    });
    expect(feed.store.state.connection).toBe('refused');
    expect(feed.store.state.error?.message).toBe(
      'your account has been disabled'
    );
  });

  it('reconnects with a new ticket after a dropped connection', async () => {
    jest.useFakeTimers();
    try {
      serve();
      const feed = new AuditFeed(
        mockSettings as any,
        url => new FakeSocket(url)
      );
      await feed.start();
      await flush();
      FakeSocket.all[0].onopen?.({});
      FakeSocket.all[0].onclose?.({ code: 1006, reason: '' });
      expect(feed.store.state.connection).toBe('retrying');
      jest.advanceTimersByTime(1000);
      await flush();
      expect(FakeSocket.all.map(s => s.url.split('token=')[1])).toEqual([
        'ticket-1',
        'ticket-2'
      ]);
      feed.dispose();
    } finally {
      jest.useRealTimers();
    }
  });
});

import { effectiveFilter, tokenSeries, usageUnits } from '../audit';

describe('This notebook', () => {
  it('adds the notebook in focus to the filters, or shows nothing without one', () => {
    expect(effectiveFilter({ model: 'm' }, false, 'a.ipynb')).toEqual({
      model: 'm'
    });
    expect(effectiveFilter({ model: 'm' }, true, 'work/a.ipynb')).toEqual({
      model: 'm',
      notebook: 'work/a.ipynb'
    });
    expect(effectiveFilter({}, true, null)).toBeNull();
  });

  it('live records of another notebook are not shown', () => {
    const filter = { notebook: 'work/a.ipynb' };
    expect(matchesFilter(rec(1, { notebook: 'work/a.ipynb' }), filter)).toBe(
      true
    );
    expect(matchesFilter(rec(2, { notebook: 'work/b.ipynb' }), filter)).toBe(
      false
    );
    expect(matchesFilter(rec(3), filter)).toBe(false);
    const state = auditReducer(initialAuditState, {
      type: 'record',
      record: rec(4, { notebook: 'work/b.ipynb' }),
      filter
    });
    expect(state.records).toEqual([]);
  });
});

describe('tokenSeries', () => {
  it('sums prompt and completion tokens per time slice', () => {
    const records = [
      rec(1, {
        time: '2026-01-01T00:00:00Z',
        prompt_tokens: 10,
        completion_tokens: 5
      }),
      rec(2, {
        time: '2026-01-01T00:00:59Z',
        prompt_tokens: 1,
        completion_tokens: 2
      }),
      rec(3, {
        time: '2026-01-01T00:10:00Z',
        prompt_tokens: 3,
        completion_tokens: 4
      }),
      rec(4, { time: '2026-01-01T00:10:00Z', action: 'auth.login' }),
      rec(5, { time: 'not a time', prompt_tokens: 100 })
    ];
    const bins = tokenSeries(records, 10);
    expect(bins).toHaveLength(10);
    expect(bins[0]).toMatchObject({ prompt: 11, completion: 7, requests: 2 });
    expect(bins[9]).toMatchObject({ prompt: 3, completion: 4, requests: 2 });
    expect(bins.reduce((n, b) => n + b.prompt, 0)).toBe(14);
    expect(bins[0].end).toBe(bins[1].start);
  });

  it('is empty without records, and one burst still spans a minute', () => {
    expect(tokenSeries([])).toEqual([]);
    const bins = tokenSeries(
      [rec(1, { time: '2026-01-01T00:00:00Z', prompt_tokens: 1 })],
      4
    );
    expect(bins[3].end - bins[0].start).toBe(60_000);
    expect(bins[0].prompt).toBe(1);
  });
});

describe('audio in seconds', () => {
  it('never counts audio samples or characters as tokens', () => {
    const transcription = rec(1, {
      action: 'transcriptions',
      endpoint: '/user/ann/mlx/v1/audio/transcriptions',
      prompt_tokens: 32000,
      completion_tokens: 9
    });
    const speech = rec(2, {
      action: 'speech',
      endpoint: '/mlx/v1/audio/speech',
      prompt_tokens: 11,
      completion_tokens: 84000,
      audio_seconds: 3.5
    });
    const chat = rec(3, { prompt_tokens: 10, completion_tokens: 5 });
    expect(usageUnits(transcription)).toMatchObject({
      audio: 'transcription',
      audioIn: 2,
      promptTokens: 0,
      completionTokens: 9
    });
    expect(usageUnits(speech)).toMatchObject({
      audio: 'speech',
      audioOut: 3.5,
      characters: 11,
      promptTokens: 0,
      completionTokens: 0
    });
    // Without the server's seconds, a speech reply has no seconds (not a guess).
    expect(
      usageUnits({ ...speech, audio_seconds: undefined }).audioOut
    ).toBeNull();
    const [bin] = tokenSeries([transcription, speech, chat], 1);
    expect(bin).toMatchObject({
      prompt: 10,
      completion: 14,
      audio: 5.5,
      requests: 3
    });
  });
});
