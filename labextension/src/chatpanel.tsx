/**
 * The chat panel (main area): pick a loaded model, stream a reply, stop it; each reply
 * shows its time to first token and tokens per second.
 */
import { MainAreaWidget } from '@jupyterlab/apputils';
import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { ApiError, toApiError } from './api';
import { IChatMessage, IChatStats, streamChat } from './chat';
import { formatCount, formatMs } from './format';
import { useAction, useStore } from './hooks';
import { mlxIcon } from './icon';
import { Button, Empty, ErrorNotice } from './sections/common';
import { MLXService } from './service';
import { Store } from './store';

export const CHAT_ID = 'jupyter-mlx-manager:chat';

interface ITurn {
  id: number;
  role: 'user' | 'assistant';
  content: string;
  model?: string;
  streaming?: boolean;
  stopped?: boolean;
  stats?: IChatStats;
  finishReason?: string | null;
  error?: ApiError;
}

/** The text under a reply: "TTFT 19 ms · 205.3 tok/s · 40 tokens". */
function StatsLine({ turn }: { turn: ITurn }): JSX.Element | null {
  const s = turn.stats;
  if (!s) {
    return turn.streaming ? (
      <div className="jp-MLXChat-stats">Generating…</div>
    ) : null;
  }
  return (
    <div className="jp-MLXChat-stats" aria-label="Reply statistics">
      <span data-field="ttft">TTFT {formatMs(s.ttftMs)}</span>
      <span data-field="tps">
        {s.tokensPerSecond === null
          ? '— tok/s'
          : `${s.tokensPerSecond.toFixed(1)} tok/s`}
      </span>
      {s.completionTokens !== null && (
        <span data-field="tokens">
          {formatCount(s.completionTokens)} tokens
        </span>
      )}
      <span>{formatMs(s.totalMs)}</span>
      {turn.stopped && <span data-field="stopped">stopped</span>}
      {!turn.stopped && turn.finishReason === 'length' && (
        <span>max tokens reached</span>
      )}
    </div>
  );
}

function ChatView({
  service,
  selection,
  onOpenPool
}: {
  service: MLXService;
  selection: Store<{ model: string }>;
  onOpenPool: () => void;
}): JSX.Element {
  const { pool, error: serviceError, status } = useStore(service.store);
  const { models: localModels } = useStore(service.models);
  const { model: wanted } = useStore(selection);
  const loaded = pool?.models ?? [];
  const model = loaded.some(m => m.model === wanted)
    ? wanted
    : (loaded[0]?.model ?? '');

  const [turns, setTurns] = React.useState<ITurn[]>([]);
  const [input, setInput] = React.useState('');
  const [maxTokens, setMaxTokens] = React.useState(256);
  const [temperature, setTemperature] = React.useState(0.7);
  const [system, setSystem] = React.useState('');
  const controller = React.useRef<AbortController | null>(null);
  const nextId = React.useRef(1);
  const log = React.useRef<HTMLDivElement>(null);
  const inputRef = React.useRef<HTMLTextAreaElement>(null);
  const loadAction = useAction();
  const streaming = turns.some(t => t.streaming);

  React.useEffect(() => {
    const el = log.current;
    if (el) {
      el.scrollTop = el.scrollHeight;
    }
  }, [turns]);
  React.useEffect(() => () => controller.current?.abort(), []);

  const update = (
    id: number,
    patch: Partial<ITurn> | ((t: ITurn) => Partial<ITurn>)
  ) =>
    setTurns(ts =>
      ts.map(t =>
        t.id === id
          ? { ...t, ...(typeof patch === 'function' ? patch(t) : patch) }
          : t
      )
    );

  const send = async () => {
    const text = input.trim();
    if (!text || !model || streaming) {
      return;
    }
    const history: IChatMessage[] = [];
    if (system.trim()) {
      history.push({ role: 'system', content: system.trim() });
    }
    for (const t of turns) {
      if (!t.error && t.content) {
        history.push({ role: t.role, content: t.content });
      }
    }
    history.push({ role: 'user', content: text });
    const userTurn: ITurn = {
      id: nextId.current++,
      role: 'user',
      content: text
    };
    const reply: ITurn = {
      id: nextId.current++,
      role: 'assistant',
      content: '',
      model,
      streaming: true
    };
    setTurns(ts => [...ts, userTurn, reply]);
    setInput('');
    const abort = new AbortController();
    controller.current = abort;

    // Many deltas per second: collect them and render once per animation frame.
    let pendingText = '';
    let frame = 0;
    const flush = () => {
      frame = 0;
      const piece = pendingText;
      pendingText = '';
      if (piece) {
        update(reply.id, t => ({ content: t.content + piece }));
      }
    };
    try {
      const result = await streamChat(
        {
          model,
          messages: history,
          max_tokens: maxTokens > 0 ? maxTokens : undefined,
          temperature
        },
        {
          signal: abort.signal,
          onDelta: piece => {
            pendingText += piece;
            if (!frame) {
              frame = requestAnimationFrame(flush);
            }
          }
        },
        service.serverSettings
      );
      if (frame) {
        cancelAnimationFrame(frame);
      }
      update(reply.id, {
        content: result.text,
        streaming: false,
        stopped: result.stopped,
        stats: result.stats,
        finishReason: result.finishReason
      });
    } catch (err) {
      if (frame) {
        cancelAnimationFrame(frame);
      }
      flush();
      update(reply.id, { streaming: false, error: toApiError(err) });
    } finally {
      controller.current = null;
      void service.refresh();
      inputRef.current?.focus();
    }
  };

  const stop = () => controller.current?.abort();

  const onKeyDown = (e: React.KeyboardEvent<HTMLTextAreaElement>) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) {
      e.preventDefault();
      void send();
    } else if (e.key === 'Escape' && streaming) {
      e.preventDefault();
      stop();
    }
  };

  const blocked =
    !!serviceError &&
    (!status || serviceError.isForbidden || serviceError.status === 401);
  const firstLocal = localModels.find(m => !loaded.some(l => l.model === m.id));

  return (
    <div className="jp-MLXChat">
      <div className="jp-MLXChat-toolbar">
        <label className="jp-MLXChat-field">
          Model
          <select
            className="jp-MLXPanel-select"
            aria-label="Chat model"
            value={model}
            disabled={!loaded.length || streaming}
            onChange={e => selection.set({ model: e.target.value })}
          >
            {!loaded.length && <option value="">no model loaded</option>}
            {loaded.map(m => (
              <option key={m.model} value={m.model}>
                {m.model}
              </option>
            ))}
          </select>
        </label>
        <label className="jp-MLXChat-field">
          Max tokens
          <input
            className="jp-MLXPanel-input jp-MLXChat-number"
            type="number"
            min={1}
            value={maxTokens}
            onChange={e => setMaxTokens(Number(e.target.value))}
          />
        </label>
        <label className="jp-MLXChat-field">
          Temperature
          <input
            className="jp-MLXPanel-input jp-MLXChat-number"
            type="number"
            min={0}
            max={2}
            step={0.1}
            value={temperature}
            onChange={e => setTemperature(Number(e.target.value))}
          />
        </label>
        <span className="jp-MLXPanel-spacer" />
        <Button
          kind="minimal"
          onClick={() => setTurns([])}
          disabled={streaming || !turns.length}
        >
          Clear
        </Button>
      </div>
      <details className="jp-MLXChat-system">
        <summary>System prompt</summary>
        <textarea
          className="jp-MLXPanel-input"
          aria-label="System prompt"
          rows={2}
          value={system}
          onChange={e => setSystem(e.target.value)}
          placeholder="You are a helpful assistant."
        />
      </details>
      {blocked && serviceError && <ErrorNotice error={serviceError} />}
      {!blocked && pool && !loaded.length && (
        <Empty>
          No model is loaded.{' '}
          {firstLocal ? (
            <>
              <Button
                kind="accept"
                busy={loadAction.busy === 'load'}
                onClick={() =>
                  void loadAction.run('load', () => service.load(firstLocal.id))
                }
              >
                Load {firstLocal.id}
              </Button>{' '}
              or{' '}
            </>
          ) : null}
          <button
            type="button"
            className="jp-MLXPanel-link"
            onClick={onOpenPool}
          >
            open the pool
          </button>
          .
        </Empty>
      )}
      {loadAction.error && (
        <ErrorNotice
          error={loadAction.error}
          title="Load failed"
          onDismiss={loadAction.clear}
        />
      )}
      <div
        className="jp-MLXChat-log"
        ref={log}
        role="log"
        aria-live="polite"
        aria-label="Conversation"
      >
        {!turns.length && model && (
          <div className="jp-MLXChat-hint">
            Ask {model} something. Enter sends, Shift+Enter adds a line, Escape
            stops.
          </div>
        )}
        {turns.map(t => (
          <div
            key={t.id}
            className={`jp-MLXChat-turn jp-mod-${t.role}`}
            data-role={t.role}
            aria-busy={t.streaming || undefined}
          >
            <div className="jp-MLXChat-role">
              {t.role === 'user' ? 'You' : t.model}
            </div>
            <div className="jp-MLXChat-content">
              {t.content}
              {t.streaming && (
                <span className="jp-MLXChat-cursor" aria-hidden="true" />
              )}
            </div>
            {t.error && (
              <ErrorNotice error={t.error} title="The reply failed" />
            )}
            {t.role === 'assistant' && !t.error && <StatsLine turn={t} />}
          </div>
        ))}
      </div>
      <form
        className="jp-MLXChat-input"
        onSubmit={e => {
          e.preventDefault();
          void send();
        }}
      >
        <textarea
          ref={inputRef}
          className="jp-MLXPanel-input"
          aria-label="Message"
          placeholder={model ? `Message ${model}` : 'Load a model first'}
          rows={3}
          value={input}
          disabled={!model}
          onChange={e => setInput(e.target.value)}
          onKeyDown={onKeyDown}
        />
        {streaming ? (
          <Button kind="warn" onClick={stop} label="Stop generating">
            Stop
          </Button>
        ) : (
          <Button
            type="submit"
            kind="accept"
            disabled={!model || !input.trim()}
            label="Send message"
          >
            Send
          </Button>
        )}
      </form>
    </div>
  );
}

class ChatContent extends ReactWidget {
  readonly selection = new Store<{ model: string }>({ model: '' });

  constructor(
    private readonly _service: MLXService,
    private readonly _onOpenPool: () => void
  ) {
    super();
    this.addClass('jp-MLXChat-widget');
  }

  protected render(): JSX.Element {
    return (
      <ChatView
        service={this._service}
        selection={this.selection}
        onOpenPool={this._onOpenPool}
      />
    );
  }
}

export class ChatPanel extends MainAreaWidget<ChatContent> {
  constructor(service: MLXService, onOpenPool: () => void) {
    super({ content: new ChatContent(service, onOpenPool) });
    this.id = CHAT_ID;
    this.title.label = 'MLX Chat';
    this.title.icon = mlxIcon;
    this.title.closable = true;
    this.addClass('jp-MLXChat-panel');
  }

  /** Choose the model (when it is loaded). */
  set model(model: string) {
    if (model) {
      this.content.selection.set({ model });
    }
  }
}
