/**
 * Jobs: start a fine-tune from a form; the jobs (own; admins everyone's) with their status, a
 * live loss chart while a fine-tune runs, Cancel, the finished adapter with Load and Chat,
 * and an evaluation's results as a table.
 */
import * as React from 'react';

import { IChartBox, niceTicks, valueScale } from '../chart';
import { formatClock, formatCount, formatEta } from '../format';
import { useAction, usePoll, useStore } from '../hooks';
import {
  adapterOf,
  evaluationRows,
  FINETUNE_DEFAULTS,
  finetuneBody,
  IEvaluationRow,
  IFinetuneForm,
  ILossPoint,
  isJobActive,
  Job,
  lossSeries
} from '../jobs';
import { MLXService } from '../service';
import { Chart } from './Chart';
import {
  Badge,
  Button,
  Empty,
  ErrorNotice,
  Facts,
  FormEnd,
  Loading,
  SectionHeader,
  TextField
} from './common';
import { ISectionProps } from './ModelsSection';

const PLOT: IChartBox = {
  width: 260,
  height: 130,
  left: 34,
  right: 8,
  top: 8,
  bottom: 30
};

function formatLoss(loss: number): string {
  return loss >= 10 ? loss.toFixed(1) : loss.toFixed(2);
}

/** Train and validation loss by iteration, with both axes, a legend and the last values. */
export function LossChart({
  curve,
  iters
}: {
  curve: ILossPoint[] | undefined;
  /** The planned iterations: the x axis runs to them, so progress shows too. */
  iters?: number;
}): JSX.Element | null {
  const { train, val, maxIteration, maxLoss } = lossSeries(curve);
  if (!train.length && !val.length) {
    return null;
  }
  const xTicks = niceTicks(Math.max(maxIteration, iters ?? 0), 4);
  const xTop = xTicks[xTicks.length - 1];
  const scale = valueScale(PLOT, niceTicks(maxLoss, 4));
  const { plotWidth, plotHeight, y } = scale;
  const x = (i: number) => PLOT.left + (i / xTop) * plotWidth;
  const path = (points: [number, number][]) =>
    points.map(([i, l]) => `${x(i).toFixed(1)},${y(l).toFixed(1)}`).join(' ');
  const last = (points: [number, number][]) =>
    points.length ? formatLoss(points[points.length - 1][1]) : '—';
  return (
    <Chart
      field="loss-chart"
      title="Loss"
      summary={{
        field: 'last-loss',
        text: `train ${last(train)} · validation ${last(val)}`
      }}
      label={`Loss by iteration: train ${last(train)}, validation ${last(val)} after ${maxIteration} iterations`}
      scale={scale}
      formatValue={formatLoss}
      xLabels={
        <>
          {xTicks.map(t => (
            <text
              key={t}
              x={x(t)}
              y={PLOT.top + plotHeight + 11}
              textAnchor={t === 0 ? 'start' : t === xTop ? 'end' : 'middle'}
            >
              {formatCount(t)}
            </text>
          ))}
          <text
            x={PLOT.left + plotWidth / 2}
            y={PLOT.height - 3}
            textAnchor="middle"
          >
            iteration
          </text>
        </>
      }
      legend={[
        {
          key: 'train',
          label: 'train loss',
          swatch: <span className="jp-MLXPanel-lossKey jp-mod-train" />
        },
        {
          key: 'val',
          label: 'validation loss',
          swatch: <span className="jp-MLXPanel-lossKey jp-mod-val" />
        }
      ]}
      unit="cross-entropy per token"
    >
      {train.length > 0 && (
        <polyline
          className="jp-MLXPanel-lossTrain"
          data-series="train"
          points={path(train)}
        />
      )}
      {val.length > 0 && (
        <polyline
          className="jp-MLXPanel-lossVal"
          data-series="val"
          points={path(val)}
        />
      )}
      {val.map(([i, l]) => (
        <circle
          key={i}
          className="jp-MLXPanel-lossValPoint"
          cx={x(i)}
          cy={y(l)}
          r={2}
        />
      ))}
    </Chart>
  );
}

/** Perplexity and accuracy per model. */
export function EvaluationTable({
  rows
}: {
  rows: IEvaluationRow[];
}): JSX.Element | null {
  if (!rows.length) {
    return null;
  }
  return (
    <table
      className="jp-MLXPanel-table jp-MLXPanel-evalTable"
      aria-label="Evaluation results"
    >
      <thead>
        <tr>
          <th scope="col">Model</th>
          <th scope="col">Perplexity</th>
          <th scope="col">Accuracy</th>
        </tr>
      </thead>
      <tbody>
        {rows.map(r => (
          <tr key={r.model}>
            <td title={r.model}>{r.model}</td>
            <td
              title={
                typeof r.tokens === 'number' ? `${r.tokens} tokens` : undefined
              }
            >
              {typeof r.perplexity === 'number' ? r.perplexity.toFixed(2) : '—'}
            </td>
            <td
              title={
                typeof r.questions === 'number'
                  ? `${r.questions} questions`
                  : undefined
              }
            >
              {typeof r.accuracy === 'number'
                ? `${Math.round(r.accuracy * 100)}%`
                : '—'}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

const STATUS_BADGE: Record<string, string> = {
  queued: 'info',
  running: 'info',
  succeeded: 'ok',
  failed: 'error',
  cancelled: 'warn',
  interrupted: 'warn'
};

/** "iteration 12 of 20 · 1,234 tok/s · 3 s left" while a fine-tune runs. */
export function progressLine(job: Job): string {
  const p = job.progress ?? {};
  const parts: string[] = [];
  const iters = job.params?.iters ?? p.iters;
  if (typeof p.iteration === 'number') {
    parts.push(
      typeof iters === 'number'
        ? `iteration ${p.iteration} of ${iters}`
        : `iteration ${p.iteration}`
    );
  }
  if (typeof p.models_done === 'number' && typeof p.models === 'number') {
    parts.push(`${p.models_done} of ${p.models} models`);
  }
  if (job.status === 'running' && typeof p.tokens_per_second === 'number') {
    parts.push(`${formatCount(Math.round(p.tokens_per_second))} tok/s`);
  }
  if (job.status === 'running' && typeof p.eta_s === 'number') {
    parts.push(formatEta(p.eta_s));
  }
  return parts.join(' · ');
}

function jobTitle(job: Job): string {
  const params = job.params ?? {};
  if (job.type === 'finetune') {
    return `Fine-tune ${String(params.model ?? '')} → ${String(params.name ?? '')}`;
  }
  if (job.type === 'evaluate') {
    return `Evaluate ${((params.models as string[]) ?? []).join(', ')}`;
  }
  return `Convert ${String(params.source ?? '')}`;
}

function JobItem({
  job,
  service,
  showUser,
  onChat
}: {
  job: Job;
  service: MLXService;
  showUser: boolean;
  onChat?: (model: string) => void;
}): JSX.Element {
  const action = useAction();
  const pool = useStore(service.store).pool;
  const adapter = adapterOf(job);
  const loaded = !!adapter && !!pool?.models.some(m => m.model === adapter);
  const loadingAdapter =
    !!adapter && (action.busy === 'load' || !!pool?.loading?.includes(adapter));
  const progress = progressLine(job);
  const iters = job.params?.iters;
  return (
    <li className="jp-MLXPanel-item" data-job={job.id} data-status={job.status}>
      <div className="jp-MLXPanel-itemHead">
        <span className="jp-MLXPanel-itemTitle">{jobTitle(job)}</span>
        <Badge kind={STATUS_BADGE[job.status] ?? ''}>{job.status}</Badge>
      </div>
      <Facts
        items={[
          ['user', showUser ? job.user : ''],
          ['started', formatClock(job.started_at ?? job.created_at)],
          ['method', String(job.params?.method ?? '')],
          ['progress', progress]
        ]}
      />
      {job.type === 'finetune' && (
        <LossChart
          curve={job.progress?.curve}
          iters={typeof iters === 'number' ? iters : undefined}
        />
      )}
      {job.type === 'evaluate' && (
        <EvaluationTable rows={evaluationRows(job)} />
      )}
      {job.error && (
        <div className="jp-MLXPanel-hint jp-mod-warn" data-field="job-error">
          {job.error}
        </div>
      )}
      {action.error && (
        <ErrorNotice
          error={action.error}
          title="Failed"
          onDismiss={action.clear}
        />
      )}
      {adapter && (
        <div className="jp-MLXPanel-hint" data-field="adapter">
          Adapter <code>{adapter}</code>: its base model plus what it learned.
        </div>
      )}
      <div className="jp-MLXPanel-itemActions">
        {isJobActive(job) && (
          <Button
            kind="warn"
            busy={action.busy === 'cancel'}
            label={`Cancel ${jobTitle(job)}`}
            onClick={() =>
              void action.run('cancel', () => service.jobs.cancel(job.id))
            }
          >
            Cancel
          </Button>
        )}
        {adapter && !loaded && (
          <Button
            kind="accept"
            busy={loadingAdapter}
            label={`Load ${adapter}`}
            onClick={() => void action.run('load', () => service.load(adapter))}
          >
            {loadingAdapter ? 'Loading…' : 'Load'}
          </Button>
        )}
        {adapter && loaded && onChat && (
          <Button
            label={`Chat with ${adapter}`}
            onClick={() => onChat(adapter)}
          >
            Chat
          </Button>
        )}
      </div>
    </li>
  );
}

function FinetuneForm({ service }: { service: MLXService }): JSX.Element {
  const { models, loaded } = useStore(service.models);
  const [form, setForm] = React.useState<IFinetuneForm>(FINETUNE_DEFAULTS);
  const [problem, setProblem] = React.useState('');
  const action = useAction();
  React.useEffect(() => {
    if (!loaded) {
      void service.refreshModels();
    }
  }, [loaded, service]);
  // Text models this server can run, not adapters (a fine-tune starts from a model).
  const choices = models.filter(
    m =>
      (m.kind ?? 'text') === 'text' &&
      !m.unavailable &&
      !m.id.startsWith('adapter/')
  );
  const model = form.model || choices[0]?.id || '';
  const set =
    (key: keyof IFinetuneForm) =>
    (e: React.ChangeEvent<HTMLInputElement | HTMLSelectElement>) =>
      setForm(f => ({ ...f, [key]: e.target.value }));
  const submit = (e: React.FormEvent) => {
    e.preventDefault();
    const checked = finetuneBody({ ...form, model });
    if ('error' in checked) {
      setProblem(checked.error);
      return;
    }
    setProblem('');
    void action.run('start', () => service.jobs.start(checked.body));
  };
  const field = (
    key: keyof IFinetuneForm,
    label: string,
    props: React.InputHTMLAttributes<HTMLInputElement> = {}
  ) => (
    <TextField label={label} value={form[key]} onChange={set(key)} {...props} />
  );
  return (
    <form
      className="jp-MLXPanel-form"
      onSubmit={submit}
      aria-label="Fine-tune a model"
    >
      <div className="jp-MLXPanel-grid">
        <label>
          Model
          <select
            className="jp-MLXPanel-select"
            value={model}
            onChange={set('model')}
          >
            {choices.length === 0 && <option value="">no text models</option>}
            {choices.map(m => (
              <option key={m.id} value={m.id}>
                {m.id}
              </option>
            ))}
          </select>
        </label>
        {field('data', 'Data (JSONL)', {
          placeholder: 'data/train.jsonl',
          title:
            'A JSONL file under your Jupyter root: {"text"}, {"prompt", "completion"} or {"messages"} lines'
        })}
        {field('name', 'Name', {
          placeholder: 'my-adapter',
          title: 'The adapter is served as adapter/<name>'
        })}
        <label>
          Method
          <select
            className="jp-MLXPanel-select"
            value={form.method}
            onChange={set('method')}
          >
            <option value="lora">LoRA</option>
            <option value="dora">DoRA</option>
            <option value="full">Full</option>
          </select>
        </label>
        {field('iters', 'Iterations', { type: 'number', min: 1 })}
        {field('batch_size', 'Batch size', { type: 'number', min: 1 })}
        {field('learning_rate', 'Learning rate', { inputMode: 'decimal' })}
        {field('lora_rank', 'LoRA rank', {
          type: 'number',
          min: 1,
          disabled: form.method === 'full'
        })}
        {field('num_layers', 'Layers', {
          type: 'number',
          min: 1,
          placeholder: 'up to 16',
          title: 'How many of the last layers are trained (blank: up to 16)'
        })}
        {field('val_fraction', 'Validation share', {
          inputMode: 'decimal',
          placeholder: '0.1',
          title: 'The share of the data held out for the validation loss'
        })}
      </div>
      <FormEnd
        problem={problem}
        action={action}
        errorTitle="Cannot start the fine-tune"
      >
        <Button
          type="submit"
          kind="accept"
          busy={action.busy === 'start'}
          disabled={!model}
        >
          Start fine-tune
        </Button>
      </FormEnd>
    </form>
  );
}

export function JobsSection({
  service,
  interval,
  onChat
}: ISectionProps): JSX.Element {
  const { jobs, error, loaded } = useStore(service.jobs.store);
  const me = useStore(service.store).status?.user?.username;
  usePoll(() => service.jobs.refresh(), Math.max(interval, 0) * 2);
  return (
    <div className="jp-MLXPanel-section">
      <section
        aria-label="Fine-tune a model"
        className="jp-MLXPanel-subsection"
      >
        <SectionHeader title="Fine-tune" level={4} />
        <FinetuneForm service={service} />
      </section>
      <section aria-label="Jobs" className="jp-MLXPanel-subsection">
        <SectionHeader
          title={service.isAdmin ? 'Jobs (everyone’s)' : 'Your jobs'}
          level={4}
        />
        {error && <ErrorNotice error={error} title="Cannot list jobs" />}
        {!loaded && !error && <Loading>Looking for jobs…</Loading>}
        {loaded && !error && jobs.length === 0 && (
          <Empty>
            No jobs yet. Fine-tune a model above, or from a notebook:{' '}
            <code>connect().finetune(…)</code>.
          </Empty>
        )}
        {jobs.length > 0 && (
          <ul className="jp-MLXPanel-list" aria-label="Jobs">
            {jobs.map(job => (
              <JobItem
                key={job.id}
                job={job}
                service={service}
                showUser={!!me && job.user !== me}
                onChat={onChat}
              />
            ))}
          </ul>
        )}
      </section>
    </div>
  );
}
