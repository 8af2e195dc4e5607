const mockMakeRequest = jest.fn();
const mockSettings = { baseUrl: 'http://h/base/', wsUrl: 'ws://h/base/' };

jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => mockSettings,
    makeRequest: (...args: unknown[]) => mockMakeRequest(...args)
  }
}));

import * as React from 'react';

import {
  adapterOf,
  evaluationRows,
  FINETUNE_DEFAULTS,
  finetuneBody,
  isJobActive,
  Job,
  jobOfEvent,
  JobsModel,
  lossSeries,
  mergeJob
} from '../jobs';
import {
  EvaluationTable,
  LossChart,
  progressLine
} from '../sections/JobsSection';
import { FakeEventSource, flush } from './eventsources';

const { renderToStaticMarkup } = jest.requireActual<{
  renderToStaticMarkup: (element: React.ReactElement) => string;
}>('react-dom/server');

const json = (status: number, body: unknown) =>
  new Response(JSON.stringify(body), { status });

const job = (over: Partial<Job> = {}): Job => ({
  id: 'job-1',
  type: 'finetune',
  status: 'running',
  user: 'alice',
  created_at: '2026-01-01T00:00:00Z',
  params: { model: 'local/tiny', name: 'fox', iters: 20, method: 'lora' },
  progress: {},
  result: null,
  error: null,
  ...over
});

const form = {
  ...FINETUNE_DEFAULTS,
  model: 'local/tiny',
  data: 'train.jsonl',
  name: 'fox'
};

describe('the fine-tune form', () => {
  it('becomes the request, numbers as numbers, blanks left to the server', () => {
    expect(
      finetuneBody({
        ...form,
        iters: '20',
        batch_size: '4',
        learning_rate: '0.01',
        lora_rank: '8',
        num_layers: '2',
        val_fraction: '0.25'
      })
    ).toEqual({
      body: {
        type: 'finetune',
        model: 'local/tiny',
        data: 'train.jsonl',
        name: 'fox',
        method: 'lora',
        iters: 20,
        batch_size: 4,
        learning_rate: 0.01,
        lora_rank: 8,
        num_layers: 2,
        val_fraction: 0.25
      }
    });
    const defaults = finetuneBody(form);
    expect('body' in defaults && defaults.body).toMatchObject({
      iters: 100,
      learning_rate: 1e-5
    });
    expect('body' in defaults && 'num_layers' in defaults.body).toBe(false);
  });

  it('says what is wrong, in the labels the form shows', () => {
    expect(finetuneBody({ ...form, model: '' })).toEqual({
      error: 'Choose a model to fine-tune.'
    });
    expect(finetuneBody({ ...form, data: '/etc/passwd' })).toEqual({
      error: 'Data: a path relative to your Jupyter root.'
    });
    expect(finetuneBody({ ...form, name: 'a b' })).toHaveProperty('error');
    expect(finetuneBody({ ...form, name: '../x' })).toHaveProperty('error');
    expect(finetuneBody({ ...form, iters: '2.5' })).toEqual({
      error: 'Iterations: a whole number of at least 1.'
    });
    expect(finetuneBody({ ...form, batch_size: '0' })).toEqual({
      error: 'Batch size: a whole number of at least 1.'
    });
    expect(finetuneBody({ ...form, learning_rate: 'fast' })).toEqual({
      error: 'Learning rate: a number above 0, at most 1.'
    });
    expect(finetuneBody({ ...form, val_fraction: '0.9' })).toEqual({
      error: 'Validation share: a number from 0 to 0.5.'
    });
  });
});

describe('job state', () => {
  it('tells active jobs from finished ones', () => {
    expect(isJobActive(job({ status: 'queued' }))).toBe(true);
    expect(isJobActive(job({ status: 'running' }))).toBe(true);
    for (const status of ['succeeded', 'failed', 'cancelled', 'interrupted']) {
      expect(isJobActive(job({ status }))).toBe(false);
    }
  });

  it('splits the loss curve into train and validation series', () => {
    const series = lossSeries([
      { iteration: 1, train_loss: 6.5 },
      { iteration: 2, train_loss: 5.1, val_loss: 5.8 },
      { iteration: 4, val_loss: 4.2 },
      { iteration: 5, train_loss: NaN }
    ]);
    expect(series.train).toEqual([
      [1, 6.5],
      [2, 5.1]
    ]);
    expect(series.val).toEqual([
      [2, 5.8],
      [4, 4.2]
    ]);
    expect(series.maxIteration).toBe(4);
    expect(series.maxLoss).toBe(6.5);
    expect(lossSeries(undefined).train).toEqual([]);
  });

  it('offers the adapter of a finished fine-tune only', () => {
    const result = { model: 'adapter/fox' };
    expect(adapterOf(job({ status: 'succeeded', result }))).toBe('adapter/fox');
    expect(adapterOf(job({ status: 'running', result }))).toBeNull();
    expect(
      adapterOf(job({ type: 'convert', status: 'succeeded', result }))
    ).toBeNull();
  });

  it('shows an evaluation’s rows as they come, then the result’s table', () => {
    const row = { model: 'local/tiny', perplexity: 12.5, accuracy: 0.5 };
    expect(
      evaluationRows(job({ type: 'evaluate', progress: { table: [row] } }))
    ).toEqual([row]);
    expect(
      evaluationRows(
        job({ type: 'evaluate', progress: {}, result: { table: [row, row] } })
      )
    ).toHaveLength(2);
  });

  it('reads a job out of a stream event and merges it by id', () => {
    const event = {
      ...job({ status: 'succeeded' }),
      event: { status: 'x' },
      final: true
    };
    const read = jobOfEvent(event)!;
    expect(read.status).toBe('succeeded');
    expect('final' in read || 'event' in read).toBe(false);
    expect(jobOfEvent({ final: true })).toBeNull();
    expect(jobOfEvent([1])).toBeNull();
    const list = [job({ id: 'a' }), job({ id: 'b' })];
    expect(
      mergeJob(list, job({ id: 'b', status: 'failed' })).map(j => j.status)
    ).toEqual(['running', 'failed']);
    expect(mergeJob(list, job({ id: 'c' })).map(j => j.id)).toEqual([
      'c',
      'a',
      'b'
    ]);
  });

  it('words the progress of a running fine-tune', () => {
    expect(
      progressLine(
        job({
          progress: { iteration: 12, tokens_per_second: 1234.4, eta_s: 3 }
        })
      )
    ).toBe('iteration 12 of 20 · 1.2k tok/s · 3\u00a0s left');
    expect(
      progressLine(
        job({ status: 'succeeded', progress: { iteration: 20, eta_s: 0 } })
      )
    ).toBe('iteration 20 of 20');
  });
});

describe('JobsModel', () => {
  beforeEach(() => {
    mockMakeRequest.mockReset();
    FakeEventSource.all = [];
  });

  it('starts a job, follows it live with a ticket, and stops at its end', async () => {
    mockMakeRequest.mockImplementation((url: string, init: RequestInit) => {
      if (url.endsWith('/auth/ticket')) {
        return Promise.resolve(json(201, { token: 't1', expires_in: 60 }));
      }
      if (url.endsWith('/jobs') && init?.method === 'POST') {
        return Promise.resolve(json(202, job({ status: 'queued' })));
      }
      return Promise.resolve(json(404, {}));
    });
    const model = new JobsModel(
      mockSettings as any,
      url => new FakeEventSource(url)
    );
    const finished = jest.fn();
    model.onFinished = finished;
    const started = finetuneBody({ ...form, iters: '20' });
    await model.start('body' in started ? started.body : ({} as any));
    const [, init] = mockMakeRequest.mock.calls[0];
    expect(JSON.parse(init.body)).toMatchObject({
      type: 'finetune',
      iters: 20
    });
    await flush();
    expect(FakeEventSource.all).toHaveLength(1);
    const source = FakeEventSource.all[0];
    expect(source.url).toBe('http://h/base/mlx/api/jobs/job-1/events?token=t1');

    const curve = [{ iteration: 1, train_loss: 6 }];
    source.emit({
      ...job({ progress: { iteration: 1, curve } }),
      final: false
    });
    expect(model.store.state.jobs[0].progress?.curve).toEqual(curve);
    expect(finished).not.toHaveBeenCalled();

    source.emit({
      ...job({ status: 'succeeded', result: { model: 'adapter/fox' } }),
      final: true
    });
    expect(source.closed).toBe(true);
    expect(finished).toHaveBeenCalledTimes(1);
    expect(adapterOf(model.store.state.jobs[0])).toBe('adapter/fox');
  });

  it('cancels with DELETE and keeps the job the server returns', async () => {
    mockMakeRequest.mockImplementation((url: string, init: RequestInit) =>
      Promise.resolve(
        init?.method === 'DELETE'
          ? json(200, job({ status: 'cancelled', error: 'cancelled by alice' }))
          : json(200, { jobs: [job({ status: 'succeeded' })] })
      )
    );
    const model = new JobsModel(
      mockSettings as any,
      url => new FakeEventSource(url)
    );
    await model.refresh();
    expect(FakeEventSource.all).toHaveLength(0); // nothing to follow
    await model.cancel('job-1');
    const [url, init] = mockMakeRequest.mock.calls[1];
    expect([url, init.method]).toEqual([
      'http://h/base/mlx/api/jobs/job-1',
      'DELETE'
    ]);
    expect(model.store.state.jobs[0].status).toBe('cancelled');
  });
});

describe('the Jobs section’s pieces', () => {
  it('draws the loss with both axes, a legend and the last values', () => {
    const html = renderToStaticMarkup(
      React.createElement(LossChart, {
        curve: [
          { iteration: 1, train_loss: 6.4 },
          { iteration: 10, train_loss: 3.9, val_loss: 4.25 }
        ],
        iters: 20
      })
    );
    expect(html).toContain('train 3.90 · validation 4.25');
    expect(html).toContain('>iteration<');
    expect(html).toContain('>20<'); // the x axis runs to the planned iterations
    expect(html).toContain('>0.00<');
    expect(html).toContain('data-series="train"');
    expect(html).toContain('validation loss');
    expect(
      renderToStaticMarkup(React.createElement(LossChart, { curve: [] }))
    ).toBe('');
  });

  it('tabulates perplexity and accuracy per model', () => {
    const html = renderToStaticMarkup(
      React.createElement(EvaluationTable, {
        rows: [
          {
            model: 'local/tiny',
            perplexity: 620.187,
            accuracy: 0.5,
            questions: 2
          },
          { model: 'adapter/fox', perplexity: 43.75, accuracy: null }
        ]
      })
    );
    expect(html).toContain('620.19');
    expect(html).toContain('50%');
    expect(html).toContain('title="2 questions"');
    expect(html).toMatch(/adapter\/fox<\/td><td[^>]*>43.75<\/td><td[^>]*>—/);
  });
});
