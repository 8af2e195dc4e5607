/**
 * Models: the models on this machine (with their characteristics; load, chat), a Hub
 * search with the server-side filters (download), and the profiles (ProfilesList.tsx).
 */
import * as React from 'react';

import { IHubModel, ILocalModel, IPool, ISearchQuery, ModelKind } from '../api';
import { isActive } from '../downloads';
import { describeFit, fitInPool, memoryEstimate } from '../estimate';
import {
  formatBytes,
  formatCount,
  formatParameters,
  formatQuantization
} from '../format';
import {
  contextFigure,
  DEMO_LABEL,
  isDemoModel,
  kindActions
} from '../modelinfo';
import { kindCode } from '../snippets';
import { useAction, usePoll, useStore } from '../hooks';
import { MLXService } from '../service';
import { throwIfFailed } from '../store';
import {
  Badge,
  Button,
  Empty,
  ErrorNotice,
  Facts,
  KindBadge,
  Loading,
  SectionHeader
} from './common';
import { ProfilesList } from './ProfilesList';

export interface ISectionProps {
  service: MLXService;
  /** Seconds between refreshes while shown. */
  interval: number;
  /** Open the chat panel on a model. */
  onChat?: (model: string) => void;
  /** Insert a code cell into the notebook in focus (or a new one). */
  onSendToNotebook?: (code: string) => Promise<void>;
}

/** "Use in notebook" of a model that is not for chatting: a first code cell for its kind. */
export function useInNotebook(
  model: { id: string; kind?: string | null },
  send?: (code: string) => Promise<void>
): (() => void) | undefined {
  const code = model.kind ? kindCode(model.id, model.kind) : null;
  if (!send || !code || !kindActions(model.kind).notebook) {
    return undefined;
  }
  return () =>
    void send(code).catch(err =>
      console.warn('jupyter-mlx-manager: could not insert the cell', err)
    );
}

/** The "Use in notebook" button. */
export function UseInNotebook({
  model,
  onClick
}: {
  model: string;
  onClick: () => void;
}): JSX.Element {
  return (
    <Button
      onClick={onClick}
      label={`Use ${model} in a notebook`}
      title="Insert a code cell that uses this model (connect()) into the notebook in focus"
    >
      Use in notebook
    </Button>
  );
}

const QUANTS: [string, string][] = [
  ['', 'any'],
  ['2bit', '2-bit'],
  ['3bit', '3-bit'],
  ['4bit', '4-bit'],
  ['5bit', '5-bit'],
  ['6bit', '6-bit'],
  ['8bit', '8-bit'],
  ['16', 'not quantized']
];
const KINDS: [ModelKind | '', string][] = [
  ['', 'any'],
  ['text', 'Text'],
  ['vision', 'Vision'],
  ['embedding', 'Embedding'],
  ['transcription', 'Transcription'],
  ['speech', 'Speech']
];
const SORTS: [string, string][] = [
  ['downloads', 'Most downloaded'],
  ['likes', 'Most liked'],
  ['trending', 'Trending'],
  ['updated', 'Recently updated'],
  ['created', 'Newest'],
  ['size', 'Smallest']
];

/** Before Load: what the model needs and whether it fits the budget now (or what goes). */
export function MemoryFit({
  model,
  pool
}: {
  model: ILocalModel;
  pool: IPool | null;
}): JSX.Element | null {
  const needed = memoryEstimate(model);
  const fit = fitInPool(needed, pool);
  const { text, level } = describeFit(fit);
  if (!text) {
    return needed === null ? null : (
      <div className="jp-MLXPanel-estimate" data-field="estimate">
        needs ≈ {formatBytes(needed)}
      </div>
    );
  }
  return (
    <div
      className={`jp-MLXPanel-estimate jp-mod-${level}`}
      data-field="estimate"
      data-fit={fit.kind}
      title="The pool's estimate: weights × 1.2 + the runner process. When the budget is short, idle unpinned models are unloaded, least recently used first."
    >
      {text}
    </div>
  );
}

/** The demo label (random weights) on a model's row: a warning, not a badge of what it is. */
export function DemoLabel(): JSX.Element {
  return (
    <span
      className="jp-MLXPanel-demoLabel"
      data-field="demo"
      title="A demo model with random weights: it answers with random words. Download a real model to chat."
    >
      {DEMO_LABEL}
    </span>
  );
}

export function LocalModel({
  model,
  detailed,
  loading,
  pool,
  onLoad,
  onChat,
  onUse
}: {
  model: ILocalModel;
  detailed: boolean;
  loading: boolean;
  /** The pool now, for the memory estimate before Load. */
  pool?: IPool | null;
  onLoad: () => void;
  onChat?: () => void;
  /** "Use in notebook" (models that are not for chatting). */
  onUse?: () => void;
}): JSX.Element {
  const context = contextFigure(model.kind, model.context_length);
  const chat = kindActions(model.kind).chat && onChat;
  return (
    <li className="jp-MLXPanel-item" data-model={model.id}>
      <div className="jp-MLXPanel-itemHead">
        <span className="jp-MLXPanel-itemTitle" title={model.id}>
          {model.id}
        </span>
        <KindBadge kind={model.kind} />
        {isDemoModel(model) && <DemoLabel />}
        {model.loaded && <Badge kind="ok">loaded</Badge>}
        {model.downloading && <Badge kind="info">downloading</Badge>}
      </div>
      {model.unavailable && (
        <div className="jp-MLXPanel-hint jp-mod-warn" role="note">
          {model.unavailable}
        </div>
      )}
      {detailed && (
        <Facts
          items={[
            ['arch', model.model_type ?? model.architecture ?? ''],
            ['params', formatParameters(model.parameters)],
            ['quant', formatQuantization(model.quantization)],
            ['dtype', model.quantization ? '' : (model.dtype ?? '')],
            [
              'size',
              typeof model.size_bytes === 'number'
                ? formatBytes(model.size_bytes)
                : ''
            ],
            ['context', context === null ? '' : formatCount(context)],
            ['tools', model.tool_calling ? 'yes' : '']
          ]}
        />
      )}
      {!model.loaded && !model.unavailable && pool !== undefined && (
        <MemoryFit model={model} pool={pool} />
      )}
      <div className="jp-MLXPanel-itemActions">
        {model.loaded && chat && (
          <Button onClick={chat} label={`Chat with ${model.id}`}>
            Chat
          </Button>
        )}
        {model.loaded && !chat && onUse && (
          <UseInNotebook model={model.id} onClick={onUse} />
        )}
        {!model.loaded && (
          <Button
            kind="accept"
            onClick={onLoad}
            busy={loading}
            disabled={!!model.unavailable}
            title={model.unavailable ?? undefined}
            label={`Load ${model.id}`}
          >
            {loading ? 'Loading…' : 'Load'}
          </Button>
        )}
      </div>
    </li>
  );
}

export function HubResult({
  model,
  downloading,
  busy,
  onDownload
}: {
  model: IHubModel;
  downloading: boolean;
  busy: boolean;
  onDownload: () => void;
}): JSX.Element {
  return (
    <li className="jp-MLXPanel-item" data-repo={model.id}>
      <div className="jp-MLXPanel-itemHead">
        <span className="jp-MLXPanel-itemTitle" title={model.id}>
          {model.id}
        </span>
        <KindBadge kind={model.kind} />
        {model.local && <Badge kind="ok">on disk</Badge>}
        {model.gated && <Badge kind="warn">gated</Badge>}
      </div>
      <Facts
        items={[
          ['arch', model.architecture ?? ''],
          ['params', formatParameters(model.parameters)],
          ['quant', formatQuantization(model.quantization)],
          [
            'size',
            typeof model.size_bytes === 'number'
              ? formatBytes(model.size_bytes)
              : ''
          ],
          [
            '↓',
            typeof model.downloads === 'number'
              ? formatCount(model.downloads)
              : ''
          ],
          ['♥', typeof model.likes === 'number' ? formatCount(model.likes) : '']
        ]}
      />
      {!model.local && (
        <div className="jp-MLXPanel-itemActions">
          <Button
            kind="accept"
            onClick={onDownload}
            busy={busy}
            disabled={downloading}
            label={`Download ${model.id}`}
          >
            {downloading ? 'Downloading…' : 'Download'}
          </Button>
        </div>
      )}
    </li>
  );
}

function HubSearch({ service }: { service: MLXService }): JSX.Element {
  const { query, results, error, searching, notice } = useStore(service.search);
  const downloads = useStore(service.downloads.store).downloads;
  const action = useAction();
  const setQuery = (update: (q: ISearchQuery) => ISearchQuery) =>
    service.search.set(s => ({ ...s, query: update(s.query) }));

  const set =
    (key: keyof ISearchQuery) =>
    (e: React.ChangeEvent<HTMLInputElement | HTMLSelectElement>) =>
      setQuery(q => ({ ...q, [key]: e.target.value }));

  const search = (e?: React.FormEvent) => {
    e?.preventDefault();
    void service.searchHub();
  };

  const active = new Set(
    downloads.filter(d => isActive(d.status)).map(d => d.repo_id)
  );
  const download = (id: string) =>
    action.run(id, async () => {
      await service.downloads.start(id);
      service.search.set({ notice: `Downloading ${id}…` });
    });

  return (
    <section aria-label="Search the Hub" className="jp-MLXPanel-subsection">
      <SectionHeader title="Search the Hub" level={4} />
      <form className="jp-MLXPanel-form" onSubmit={search} role="search">
        <div className="jp-MLXPanel-row">
          <input
            className="jp-MLXPanel-input"
            type="search"
            placeholder="Search MLX models, e.g. qwen"
            aria-label="Search query"
            value={query.q ?? ''}
            onChange={set('q')}
          />
          <Button type="submit" busy={searching} kind="accept">
            Search
          </Button>
          {(results || error) && (
            <Button
              kind="minimal"
              onClick={() =>
                service.search.set({ results: null, error: null, notice: '' })
              }
              label="Clear search results"
              title="Hide the results"
            >
              Clear
            </Button>
          )}
        </div>
        <details className="jp-MLXPanel-filters">
          <summary>Filters</summary>
          <div className="jp-MLXPanel-grid">
            <label>
              Author
              <input
                className="jp-MLXPanel-input"
                value={query.author ?? ''}
                onChange={set('author')}
                placeholder="mlx-community"
              />
            </label>
            <label>
              Architecture
              <input
                className="jp-MLXPanel-input"
                value={query.arch ?? ''}
                onChange={set('arch')}
                placeholder="llama, qwen2…"
              />
            </label>
            <label>
              Kind
              <select
                className="jp-MLXPanel-select"
                value={query.kind ?? ''}
                onChange={set('kind')}
              >
                {KINDS.map(([value, label]) => (
                  <option key={value} value={value}>
                    {label}
                  </option>
                ))}
              </select>
            </label>
            <label>
              Quantization
              <select
                className="jp-MLXPanel-select"
                value={query.quant ?? ''}
                onChange={set('quant')}
              >
                {QUANTS.map(([value, label]) => (
                  <option key={value} value={value}>
                    {label}
                  </option>
                ))}
              </select>
            </label>
            <label>
              Max size (GiB)
              <input
                className="jp-MLXPanel-input"
                type="number"
                min={0}
                step="0.5"
                value={query.max_size_gb ?? ''}
                onChange={set('max_size_gb')}
              />
            </label>
            <label>
              Sort
              <select
                className="jp-MLXPanel-select"
                value={query.sort ?? ''}
                onChange={set('sort')}
              >
                {SORTS.map(([value, label]) => (
                  <option key={value} value={value}>
                    {label}
                  </option>
                ))}
              </select>
            </label>
            <label>
              Results
              <select
                className="jp-MLXPanel-select"
                value={String(query.limit ?? 20)}
                onChange={e =>
                  setQuery(q => ({ ...q, limit: Number(e.target.value) }))
                }
              >
                {[10, 20, 50, 100].map(n => (
                  <option key={n} value={n}>
                    {n}
                  </option>
                ))}
              </select>
            </label>
          </div>
        </details>
      </form>
      {error &&
        (error.isNotFound ? (
          <Empty>Hub search is not available on this server yet.</Empty>
        ) : (
          <ErrorNotice error={error} title="Search failed" />
        ))}
      {action.error && (
        <ErrorNotice
          error={action.error}
          title="Download failed"
          onDismiss={action.clear}
        />
      )}
      {notice && !action.error && (
        <div className="jp-MLXPanel-hint" role="status">
          {notice}{' '}
          <button
            type="button"
            className="jp-MLXPanel-link"
            onClick={() => service.openSection('downloads')}
          >
            Show downloads
          </button>
        </div>
      )}
      {results && results.length === 0 && (
        <Empty>No models match. Try fewer filters.</Empty>
      )}
      {results && results.length > 0 && (
        <ul className="jp-MLXPanel-list" aria-label="Search results">
          {results.map(m => (
            <HubResult
              key={m.id}
              model={m}
              downloading={active.has(m.id)}
              busy={action.busy === m.id}
              onDownload={() => void download(m.id)}
            />
          ))}
        </ul>
      )}
    </section>
  );
}

export function ModelsSection({
  service,
  interval,
  onChat,
  onSendToNotebook
}: ISectionProps): JSX.Element {
  const { models, detailed, error, loaded } = useStore(service.models);
  const pool = useStore(service.store).pool;
  usePoll(
    async () => {
      await Promise.all([service.refreshModels(), service.refreshProfiles()]);
      throwIfFailed(service.models.state.error); // back off while the server fails
    },
    Math.max(interval, 0) * 2
  );
  const action = useAction();
  const loading = new Set(pool?.loading ?? []);
  const loadedIds = new Set((pool?.models ?? []).map(m => m.model));

  return (
    <div className="jp-MLXPanel-section">
      <HubSearch service={service} />
      <section
        aria-label="Models on this machine"
        className="jp-MLXPanel-subsection"
      >
        <SectionHeader title="On this machine" level={4} />
        {error && (
          <ErrorNotice error={error} title="Cannot list local models" />
        )}
        {action.error && (
          <ErrorNotice
            error={action.error}
            title="Load failed"
            onDismiss={action.clear}
          />
        )}
        {!loaded && !error && <Loading>Looking for local models…</Loading>}
        {loaded && !error && models.length === 0 && (
          <Empty>
            No models yet. Search the Hub above and download one, or create the
            offline demo model with <code>jupyter mlx-manager demo-model</code>.
          </Empty>
        )}
        {models.length > 0 && (
          <ul className="jp-MLXPanel-list" aria-label="Local models">
            {models.map(m => {
              const isLoaded = loadedIds.has(m.id) || (!pool && !!m.loaded);
              return (
                <LocalModel
                  key={m.id}
                  model={{ ...m, loaded: isLoaded }}
                  detailed={detailed}
                  loading={loading.has(m.id) || action.busy === m.id}
                  pool={pool}
                  onLoad={() => void action.run(m.id, () => service.load(m.id))}
                  onChat={onChat ? () => onChat(m.id) : undefined}
                  onUse={useInNotebook(m, onSendToNotebook)}
                />
              );
            })}
          </ul>
        )}
      </section>
      <ProfilesList service={service} onChat={onChat} />
    </div>
  );
}
