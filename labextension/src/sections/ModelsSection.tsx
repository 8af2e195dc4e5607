/**
 * Models: the models on this machine (with their characteristics; load, chat) and a Hub
 * search with the server-side filters (download).
 */
import * as React from 'react';

import {
  ApiError,
  IHubModel,
  ILocalModel,
  ISearchQuery,
  ModelKind,
  searchModels,
  toApiError
} from '../api';
import { isActive } from '../downloads';
import {
  formatBytes,
  formatCount,
  formatParameters,
  formatQuantization
} from '../format';
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

export interface ISectionProps {
  service: MLXService;
  /** Seconds between refreshes while shown. */
  interval: number;
  /** Open the chat panel on a model. */
  onChat?: (model: string) => void;
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

export function LocalModel({
  model,
  detailed,
  loading,
  onLoad,
  onChat
}: {
  model: ILocalModel;
  detailed: boolean;
  loading: boolean;
  onLoad: () => void;
  onChat?: () => void;
}): JSX.Element {
  return (
    <li className="jp-MLXPanel-item" data-model={model.id}>
      <div className="jp-MLXPanel-itemHead">
        <span className="jp-MLXPanel-itemTitle" title={model.id}>
          {model.id}
        </span>
        <KindBadge kind={model.kind} />
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
            [
              'context',
              typeof model.context_length === 'number'
                ? formatCount(model.context_length)
                : ''
            ],
            ['tools', model.tool_calling ? 'yes' : '']
          ]}
        />
      )}
      <div className="jp-MLXPanel-itemActions">
        {model.loaded ? (
          onChat && (
            <Button onClick={onChat} label={`Chat with ${model.id}`}>
              Chat
            </Button>
          )
        ) : (
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
  const [query, setQuery] = React.useState<ISearchQuery>({
    q: '',
    sort: 'downloads',
    limit: 20
  });
  const [results, setResults] = React.useState<IHubModel[] | null>(null);
  const [error, setError] = React.useState<ApiError | null>(null);
  const [searching, setSearching] = React.useState(false);
  const downloads = useStore(service.downloads.store).downloads;
  const action = useAction();
  const [notice, setNotice] = React.useState('');

  const set =
    (key: keyof ISearchQuery) =>
    (e: React.ChangeEvent<HTMLInputElement | HTMLSelectElement>) =>
      setQuery(q => ({ ...q, [key]: e.target.value }));

  const search = async (e?: React.FormEvent) => {
    e?.preventDefault();
    setSearching(true);
    setError(null);
    try {
      setResults(await searchModels(query, service.serverSettings));
    } catch (err) {
      setError(toApiError(err));
      setResults(null);
    } finally {
      setSearching(false);
    }
  };

  const active = new Set(
    downloads.filter(d => isActive(d.status)).map(d => d.repo_id)
  );
  const download = (id: string) =>
    action.run(id, async () => {
      await service.downloads.start(id);
      setNotice(`Downloading ${id}…`);
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
              Max size (GB)
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
  onChat
}: ISectionProps): JSX.Element {
  const { models, detailed, error, loaded } = useStore(service.models);
  const pool = useStore(service.store).pool;
  usePoll(
    async () => {
      await service.refreshModels();
      throwIfFailed(service.models.state.error); // back off while the server fails
    },
    Math.max(interval, 0) * 2
  );
  const action = useAction();
  const loading = new Set(pool?.loading ?? []);
  const loadedIds = new Set((pool?.models ?? []).map(m => m.model));

  return (
    <div className="jp-MLXPanel-section">
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
            No models yet. Search the Hub below and download one, or create the
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
                  onLoad={() => void action.run(m.id, () => service.load(m.id))}
                  onChat={onChat ? () => onChat(m.id) : undefined}
                />
              );
            })}
          </ul>
        )}
      </section>
      <HubSearch service={service} />
    </div>
  );
}
