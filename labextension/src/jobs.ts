/**
 * Workbench jobs (fine-tune, evaluate, convert): `mlx/api/jobs`, the state of the Jobs section
 * and what its loss chart and result table show. A running job is followed live on
 * `jobs/{id}/events?token=<ticket>` (a fresh ticket per connection); each event is the whole
 * job again, the last one with `final: true`.
 */
import { ServerConnection } from '@jupyterlab/services';

import {
  ApiError,
  eventSourceUrl,
  jsonInit,
  requestAPI,
  toApiError
} from './api';
import { EventSourceFactory, TicketStreams } from './eventstreams';
import type { components } from './generated/openapi';
import { Store } from './store';

/** The body of `POST mlx/api/jobs`, as the server's OpenAPI document describes it. */
export type JobRequest = components['schemas']['JobRequest'];

/** One point of a fine-tune's loss curve (a validation point may come without train loss). */
export interface ILossPoint {
  iteration: number;
  train_loss?: number;
  val_loss?: number;
}

/** One row of an evaluation's result table. */
export interface IEvaluationRow {
  model: string;
  perplexity?: number | null;
  tokens?: number;
  accuracy?: number | null;
  questions?: number;
}

/** What a job's `progress` holds: the last event's fields, a fine-tune's curve, an evaluation's rows. */
export interface IJobProgress {
  iteration?: number;
  iters?: number;
  train_loss?: number;
  val_loss?: number;
  tokens_per_second?: number;
  eta_s?: number;
  curve?: ILossPoint[];
  table?: IEvaluationRow[];
  models_done?: number;
  models?: number;
}

/** A job (`GET mlx/api/jobs/{id}`); the generated type leaves `progress` and `result` open. */
export type Job = Omit<
  components['schemas']['Job'],
  'params' | 'progress' | 'result'
> & {
  started_at?: string | null;
  finished_at?: string | null;
  params?: Record<string, unknown>;
  progress?: IJobProgress;
  /** A fine-tune's `model` (`adapter/<name>`), a conversion's, an evaluation's `table`. */
  result?: { model?: string; table?: IEvaluationRow[] } | null;
};

const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'interrupted']);

/** Whether a job may still change (queued or running). */
export function isJobActive(job: Pick<Job, 'status'>): boolean {
  return !FINAL.has(job.status);
}

export async function listJobs(
  settings?: ServerConnection.ISettings
): Promise<Job[]> {
  const reply = await requestAPI<{ jobs: Job[] }>('jobs', {}, settings);
  return reply?.jobs ?? [];
}

export function createJob(
  body: JobRequest,
  settings?: ServerConnection.ISettings
): Promise<Job> {
  return requestAPI<Job>('jobs', jsonInit('POST', body), settings);
}

export function cancelJob(
  id: string,
  settings?: ServerConnection.ISettings
): Promise<Job> {
  return requestAPI<Job>(
    `jobs/${encodeURIComponent(id)}`,
    { method: 'DELETE' },
    settings
  );
}

/** The fine-tune form as typed: every field a string (inputs), checked by `finetuneBody`. */
export interface IFinetuneForm {
  model: string;
  data: string;
  name: string;
  method: 'lora' | 'dora' | 'full';
  iters: string;
  batch_size: string;
  learning_rate: string;
  lora_rank: string;
  num_layers: string;
  /** The share of the data held out for the validation loss (0 to 0.5). */
  val_fraction: string;
}

export const FINETUNE_DEFAULTS: IFinetuneForm = {
  model: '',
  data: '',
  name: '',
  method: 'lora',
  iters: '100',
  batch_size: '4',
  learning_rate: '1e-5',
  lora_rank: '8',
  num_layers: '',
  val_fraction: ''
};

/**
 * The fine-tune request of a form, or the first thing wrong with it (said as the form's
 * labels say it). Blank optional numbers are left to the server's defaults.
 */
export function finetuneBody(
  form: IFinetuneForm
): { body: JobRequest } | { error: string } {
  if (!form.model) {
    return { error: 'Choose a model to fine-tune.' };
  }
  const data = form.data.trim();
  if (!data) {
    return { error: 'Data: a JSONL file under your Jupyter root.' };
  }
  if (data.startsWith('/') || data.startsWith('~')) {
    return { error: 'Data: a path relative to your Jupyter root.' };
  }
  const name = form.name.trim();
  if (!/^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9_])?$/.test(name)) {
    return {
      error: "Name: 1-64 letters, digits, '.', '_' or '-' (the adapter's name)."
    };
  }
  const body: JobRequest = {
    type: 'finetune',
    model: form.model,
    data,
    name,
    method: form.method
  };
  const wholes: [keyof IFinetuneForm & keyof JobRequest, string][] = [
    ['iters', 'Iterations'],
    ['batch_size', 'Batch size'],
    ['lora_rank', 'LoRA rank'],
    ['num_layers', 'Layers']
  ];
  for (const [key, label] of wholes) {
    const text = form[key].trim();
    if (!text) {
      continue;
    }
    const value = Number(text);
    if (!Number.isInteger(value) || value < 1) {
      return { error: `${label}: a whole number of at least 1.` };
    }
    (body as Record<string, unknown>)[key] = value;
  }
  const rate = form.learning_rate.trim();
  if (rate) {
    const value = Number(rate);
    if (!(value > 0 && value <= 1)) {
      return { error: 'Learning rate: a number above 0, at most 1.' };
    }
    body.learning_rate = value;
  }
  const share = form.val_fraction.trim();
  if (share) {
    const value = Number(share);
    if (!(value >= 0 && value <= 0.5)) {
      return { error: 'Validation share: a number from 0 to 0.5.' };
    }
    body.val_fraction = value;
  }
  return { body };
}

/** A fine-tune's loss curve as two series of (iteration, loss), and the ranges to draw them in. */
export function lossSeries(curve: ILossPoint[] | undefined): {
  train: [number, number][];
  val: [number, number][];
  maxIteration: number;
  maxLoss: number;
} {
  const train: [number, number][] = [];
  const val: [number, number][] = [];
  for (const p of curve ?? []) {
    if (typeof p.train_loss === 'number' && isFinite(p.train_loss)) {
      train.push([p.iteration, p.train_loss]);
    }
    if (typeof p.val_loss === 'number' && isFinite(p.val_loss)) {
      val.push([p.iteration, p.val_loss]);
    }
  }
  const all = [...train, ...val];
  return {
    train,
    val,
    maxIteration: Math.max(1, ...all.map(([i]) => i)),
    maxLoss: Math.max(0, ...all.map(([, l]) => l))
  };
}

/** The adapter a finished fine-tune made (`adapter/<name>`), or null. */
export function adapterOf(job: Job): string | null {
  return job.type === 'finetune' && job.status === 'succeeded'
    ? (job.result?.model ?? null)
    : null;
}

/** An evaluation's rows: the result's table once done, the rows so far while it runs. */
export function evaluationRows(job: Job): IEvaluationRow[] {
  return job.result?.table ?? job.progress?.table ?? [];
}

/** A job from an event of its stream (the job itself plus `event` and `final`). */
export function jobOfEvent(data: unknown): Job | null {
  if (!data || typeof data !== 'object' || Array.isArray(data)) {
    return null;
  }
  const job: Record<string, unknown> = { ...data };
  delete job.event;
  delete job.final;
  return typeof job.id === 'string' && typeof job.status === 'string'
    ? (job as unknown as Job)
    : null;
}

/** Put a job into the list (by id; new ones first). */
export function mergeJob(list: Job[], job: Job): Job[] {
  const index = list.findIndex(j => j.id === job.id);
  if (index < 0) {
    return [job, ...list];
  }
  const next = list.slice();
  next[index] = job;
  return next;
}

export interface IJobsState {
  jobs: Job[];
  error: ApiError | null;
  loaded: boolean;
}

/** The jobs list, with an event stream open on each running job. */
export class JobsModel {
  readonly store = new Store<IJobsState>({
    jobs: [],
    error: null,
    loaded: false
  });

  constructor(
    private readonly _settings?: ServerConnection.ISettings,
    factory?: EventSourceFactory
  ) {
    this._streams = new TicketStreams(
      _settings,
      factory,
      () => void this.refresh().catch(() => undefined)
    );
  }

  /** Called once when a job followed here ends (e.g. to list a new adapter). */
  onFinished: ((job: Job) => void) | null = null;

  async refresh(): Promise<void> {
    try {
      const jobs = await listJobs(this._settings);
      this.store.set({ jobs, error: null, loaded: true });
      this._follow();
    } catch (err) {
      this.store.set({ error: toApiError(err), loaded: true });
      throw this.store.state.error;
    }
  }

  async start(body: JobRequest): Promise<Job> {
    const job = await createJob(body, this._settings);
    this.apply(job);
    this._follow();
    return job;
  }

  async cancel(id: string): Promise<void> {
    this.apply(await cancelJob(id, this._settings));
  }

  /** A newer state of a job. */
  apply(job: Job): void {
    const before = this.store.state.jobs.find(j => j.id === job.id);
    this.store.set(s => ({ ...s, jobs: mergeJob(s.jobs, job) }));
    if (!isJobActive(job)) {
      this._streams.close(job.id);
      if (before && isJobActive(before)) {
        this.onFinished?.(job);
      }
    }
  }

  dispose(): void {
    this._streams.dispose();
  }

  private _follow(): void {
    for (const { id } of this.store.state.jobs.filter(isJobActive)) {
      this._streams.follow(id, {
        url: ticket =>
          eventSourceUrl(
            `jobs/${encodeURIComponent(id)}/events`,
            ticket,
            this._settings
          ),
        receive: data => {
          const job = jobOfEvent(data);
          if (job) {
            this.apply(job);
          }
          return job !== null;
        }
      });
    }
  }

  private _streams: TicketStreams;
}
