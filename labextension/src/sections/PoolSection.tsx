/**
 * Pool: loaded models with memory bars against the budget; load, unload, pin, keep-alive.
 */
import * as React from 'react';

import { ILocalModel, IPoolModel } from '../api';
import {
  formatBytes,
  formatCount,
  formatKeepAlive,
  formatRelative,
  plural
} from '../format';
import { useAction, useStore } from '../hooks';
import { contextFigure, isDemoModel, kindActions } from '../modelinfo';
import {
  Badge,
  KindBadge,
  Bar,
  Button,
  Empty,
  ErrorNotice,
  Facts,
  memoryText,
  SectionHeader
} from './common';
import {
  DemoLabel,
  ISectionProps,
  MemoryFit,
  UseInNotebook,
  useInNotebook
} from './ModelsSection';

/** Keep-alive choices (seconds; negative = forever, 0 = unload when idle). */
export const KEEP_ALIVE_CHOICES = [0, 60, 300, 1800, 3600, 4 * 3600, 86400, -1];

function KeepAliveSelect({
  value,
  onChange,
  label,
  allowDefault,
  disabled
}: {
  value: number | undefined;
  onChange: (seconds: number | undefined) => void;
  label: string;
  allowDefault?: boolean;
  disabled?: boolean;
}): JSX.Element {
  const choices = [...KEEP_ALIVE_CHOICES];
  if (value !== undefined && !choices.includes(value < 0 ? -1 : value)) {
    choices.push(value);
    choices.sort((a, b) => (a < 0 ? 1 : b < 0 ? -1 : a - b));
  }
  return (
    <select
      className="jp-MLXPanel-select"
      aria-label={label}
      value={value === undefined ? '' : String(value < 0 ? -1 : value)}
      disabled={disabled}
      onChange={e =>
        onChange(e.target.value === '' ? undefined : Number(e.target.value))
      }
    >
      {allowDefault && <option value="">server default</option>}
      {choices.map(s => (
        <option key={s} value={String(s)}>
          {formatKeepAlive(s)}
        </option>
      ))}
    </select>
  );
}

export function LoadedModel({
  model,
  local,
  budget,
  busy,
  onPin,
  onKeepAlive,
  onUnload,
  onChat,
  onUse
}: {
  model: IPoolModel;
  /** The model as `models/local` describes it (context, demo flag), when known. */
  local?: ILocalModel;
  budget: number | undefined;
  busy: string | null;
  onPin: () => void;
  onKeepAlive: (seconds: number) => void;
  onUnload: () => void;
  onChat?: () => void;
  /** "Use in notebook" (models that are not for chatting). */
  onUse?: () => void;
}): JSX.Element {
  const expires = model.pinned
    ? 'never unloads (pinned)'
    : model.keep_alive < 0
      ? 'never unloads'
      : `unloads ${model.expires_at ? formatRelative(model.expires_at) : '—'}`;
  const context = contextFigure(
    model.kind,
    local?.context_length,
    model.context_length
  );
  const chat = kindActions(model.kind).chat && onChat;
  return (
    <li className="jp-MLXPanel-item" data-model={model.model}>
      <div className="jp-MLXPanel-itemHead">
        <span className="jp-MLXPanel-itemTitle" title={model.model}>
          {model.model}
        </span>
        <Badge kind={model.status === 'busy' ? 'info' : 'ok'}>
          {model.status}
        </Badge>
        <KindBadge kind={model.kind} />
        {isDemoModel({ id: model.model, demo: local?.demo }) && <DemoLabel />}
        {model.pinned && <Badge kind="accent">pinned</Badge>}
      </div>
      <Bar
        label={`Memory of ${model.model}`}
        value={model.memory_bytes}
        max={budget}
        text={memoryText(model.memory_bytes, budget)}
      />
      <div className="jp-MLXPanel-itemMeta">
        <span data-field="memory">{formatBytes(model.memory_bytes)}</span>
        <span>{expires}</span>
      </div>
      <Facts
        items={[
          ['requests', formatCount(model.requests ?? 0)],
          ['in flight', model.in_flight ? String(model.in_flight) : ''],
          ['context', context === null ? '' : formatCount(context)],
          ['tools', model.tool_calling ? 'yes' : ''],
          ['last used', model.last_used ? formatRelative(model.last_used) : ''],
          ['pid', model.pid ? String(model.pid) : '']
        ]}
      />
      <div className="jp-MLXPanel-itemActions">
        {!model.pinned && (
          <label className="jp-MLXPanel-inline">
            Keep alive
            <KeepAliveSelect
              label={`Keep-alive of ${model.model}`}
              value={model.keep_alive}
              disabled={busy === 'keep'}
              onChange={s => s !== undefined && onKeepAlive(s)}
            />
          </label>
        )}
        <Button
          onClick={onPin}
          pressed={model.pinned}
          busy={busy === 'pin'}
          label={`${model.pinned ? 'Unpin' : 'Pin'} ${model.model}`}
          title={
            model.pinned
              ? 'Unpin: may be evicted or expire again'
              : 'Pin: never evicted, never expires'
          }
        >
          {model.pinned ? 'Unpin' : 'Pin'}
        </Button>
        {chat && (
          <Button onClick={chat} label={`Chat with ${model.model}`}>
            Chat
          </Button>
        )}
        {!chat && onUse && (
          <UseInNotebook model={model.model} onClick={onUse} />
        )}
        <Button
          kind="warn"
          onClick={onUnload}
          busy={busy === 'unload'}
          label={`Unload ${model.model}`}
        >
          Unload
        </Button>
      </div>
    </li>
  );
}

function LoadForm({ props }: { props: ISectionProps }): JSX.Element {
  const { service } = props;
  const { models } = useStore(service.models);
  const pool = useStore(service.store).pool;
  const loaded = new Set([
    ...(pool?.models ?? []).map(m => m.model),
    ...(pool?.loading ?? [])
  ]);
  const candidates = models.filter(m => !loaded.has(m.id));
  const [model, setModel] = React.useState('');
  const [pin, setPin] = React.useState(false);
  const [keepAlive, setKeepAlive] = React.useState<number | undefined>(
    service.defaultKeepAlive
  );
  const action = useAction();
  const chosen = candidates.some(m => m.id === model)
    ? model
    : (candidates[0]?.id ?? '');
  const chosenModel = candidates.find(m => m.id === chosen);

  if (!candidates.length) {
    return (
      <Empty>
        {models.length
          ? 'Every local model is loaded.'
          : 'No local models to load yet: download one in Models.'}
      </Empty>
    );
  }
  return (
    <form
      className="jp-MLXPanel-form"
      onSubmit={e => {
        e.preventDefault();
        if (chosen) {
          void action.run('load', () =>
            service.load(chosen, pin ? { pin } : { keep_alive: keepAlive })
          );
        }
      }}
    >
      <div className="jp-MLXPanel-row">
        <select
          className="jp-MLXPanel-select jp-mod-grow"
          aria-label="Model to load"
          value={chosen}
          onChange={e => setModel(e.target.value)}
        >
          {candidates.map(m => (
            <option key={m.id} value={m.id}>
              {m.id}
            </option>
          ))}
        </select>
        <Button type="submit" kind="accept" busy={action.busy === 'load'}>
          Load
        </Button>
      </div>
      {chosenModel && <MemoryFit model={chosenModel} pool={pool} />}
      <div className="jp-MLXPanel-row">
        <label className="jp-MLXPanel-inline">
          <input
            type="checkbox"
            checked={pin}
            onChange={e => setPin(e.target.checked)}
          />{' '}
          Pin
        </label>
        {!pin && (
          <label className="jp-MLXPanel-inline">
            Keep alive
            <KeepAliveSelect
              label="Keep-alive of the model to load"
              value={keepAlive}
              onChange={setKeepAlive}
              allowDefault
            />
          </label>
        )}
      </div>
      {action.error && (
        <ErrorNotice
          error={action.error}
          title="Load failed"
          onDismiss={action.clear}
        />
      )}
    </form>
  );
}

export function PoolSection(props: ISectionProps): JSX.Element {
  const { service, onChat, onSendToNotebook } = props;
  const { pool } = useStore(service.store);
  // The shared service polls the pool every `interval` seconds already (for the status bar);
  // opening this section asks at once, and for the list of models to load.
  React.useEffect(() => {
    void service.refresh();
    void service.refreshModels();
  }, [service]);
  const [busy, setBusy] = React.useState<Record<string, string>>({});
  const [error, setError] = React.useState<Error | null>(null);

  const act = async (
    model: string,
    kind: string,
    action: () => Promise<unknown>
  ) => {
    setBusy(b => ({ ...b, [model]: kind }));
    setError(null);
    try {
      await action();
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(b => {
        const next = { ...b };
        delete next[model];
        return next;
      });
    }
  };

  const models = pool?.models ?? [];
  const local = useStore(service.models).models;
  const limits = pool?.limits ?? {};
  const budget = limits.max_memory_bytes;
  const used =
    pool?.memory_used_bytes ??
    models.reduce((sum, m) => sum + (m.memory_bytes || 0), 0);

  return (
    <div className="jp-MLXPanel-section">
      <div className="jp-MLXPanel-summary">
        <Bar
          label="Pool memory in use"
          value={used}
          max={budget}
          text={memoryText(used, budget)}
        />
        <div className="jp-MLXPanel-itemMeta">
          <span data-field="pool-memory">{memoryText(used, budget)}</span>
          <span data-field="pool-count">
            {typeof limits.max_loaded_models === 'number'
              ? `${models.length} of ${plural(limits.max_loaded_models, 'model')}`
              : plural(models.length, 'model')}
          </span>
          {typeof limits.default_keep_alive === 'number' && (
            <span>
              idle unload: {formatKeepAlive(limits.default_keep_alive)}
            </span>
          )}
        </div>
      </div>
      <SectionHeader title="Load a model" level={4} />
      <LoadForm props={props} />
      {error && <ErrorNotice error={error} onDismiss={() => setError(null)} />}
      <SectionHeader title="Loaded" level={4} />
      {(pool?.loading ?? []).map(id => (
        <div key={id} className="jp-MLXPanel-loading" role="status">
          Loading {id}…
        </div>
      ))}
      {pool && models.length === 0 && !(pool.loading ?? []).length && (
        <Empty>
          No models loaded. Load one above; requests also load a local model on
          first use.
        </Empty>
      )}
      {models.length > 0 && (
        <ul className="jp-MLXPanel-list" aria-label="Loaded models">
          {models.map(m => (
            <LoadedModel
              key={m.model}
              model={m}
              local={local.find(
                l => l.id.toLowerCase() === m.model.toLowerCase()
              )}
              budget={budget}
              busy={busy[m.model] ?? null}
              onPin={() =>
                void act(m.model, 'pin', () =>
                  service.update(m.model, { pin: !m.pinned })
                )
              }
              onKeepAlive={s =>
                void act(m.model, 'keep', () =>
                  service.update(m.model, { keep_alive: s })
                )
              }
              onUnload={() =>
                void act(m.model, 'unload', () => service.unload(m.model))
              }
              onChat={onChat ? () => onChat(m.model) : undefined}
              onUse={useInNotebook(
                { id: m.model, kind: m.kind },
                onSendToNotebook
              )}
            />
          ))}
        </ul>
      )}
    </div>
  );
}
