/**
 * The chat panel (main area): pick a loaded chat model (text or vision), stream a reply, stop
 * it; each reply shows its time to first token and tokens per second. Replies are Markdown
 * (JupyterLab's rendermime), with the reasoning of a thinking model folded away and tool
 * calls shown; each can be copied, regenerated or sent to a notebook as a code cell. The
 * conversations are kept per notebook server (history.ts). A vision model also takes images
 * (attached or pasted), sent as `image_url` content parts (data URLs).
 */
import { Clipboard, MainAreaWidget } from '@jupyterlab/apputils';
import type { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { ApiError, IPoolModel, toApiError } from './api';
import {
  buildMessages,
  chatModels,
  checkImages,
  IMAGE_TYPES,
  IPendingImage,
  IToolCall,
  MAX_IMAGE_BYTES,
  MAX_IMAGES,
  readDataURL,
  streamChat
} from './chat';
import { formatBytes, formatCount, formatMs, plural } from './format';
import { ChatHistory, historyKey, ITurn } from './history';
import { useAction, useStore } from './hooks';
import { mlxIcon } from './icon';
import { Markdown } from './markdown';
import { DEMO_LABEL, isDemoModel } from './modelinfo';
import { Button, Empty, ErrorNotice } from './sections/common';
import { MLXService, SectionId } from './service';
import { exchangeCode } from './snippets';
import { Store } from './store';

export const CHAT_ID = 'jupyter-mlx-manager:chat';

/** Inserts a code cell into the notebook in focus (or a new one). */
export type SendToNotebook = (code: string) => Promise<void>;

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
        <span data-field="length">max tokens reached</span>
      )}
    </div>
  );
}

/** The model picker: the loaded chat models only (the caller filters, `chatModels`). */
export function ModelPicker({
  models,
  profiles = [],
  value,
  disabled,
  demos,
  onChange
}: {
  models: readonly IPoolModel[];
  /** Profile names (`mlx/api/profiles`): model ids too, served by their first model that is up. */
  profiles?: readonly string[];
  value: string;
  disabled?: boolean;
  /** The server's `demo` flags of local models, by id (where it sends them). */
  demos?: Record<string, boolean | undefined>;
  onChange: (model: string) => void;
}): JSX.Element {
  return (
    <label className="jp-MLXChat-field">
      Model
      <select
        className="jp-MLXPanel-select"
        aria-label="Chat model"
        value={value}
        disabled={!(models.length || profiles.length) || disabled}
        onChange={e => onChange(e.target.value)}
      >
        {!models.length && !profiles.length && (
          <option value="">no chat model loaded</option>
        )}
        {models.map(m => (
          <option key={m.model} value={m.model}>
            {m.model}
            {m.kind === 'vision' ? ' (vision)' : ''}
            {isDemoModel({ id: m.model, demo: demos?.[m.model] })
              ? ` (${DEMO_LABEL})`
              : ''}
          </option>
        ))}
        {profiles.length > 0 && (
          <optgroup label="Profiles">
            {profiles.map(name => (
              <option key={`profile:${name}`} value={name}>
                {name} (profile)
              </option>
            ))}
          </optgroup>
        )}
      </select>
    </label>
  );
}

/** Images shown in a turn of the transcript, or pending under the prompt box. */
function ImageStrip({
  images,
  onRemove
}: {
  images: readonly { url: string; name?: string }[];
  onRemove?: (index: number) => void;
}): JSX.Element | null {
  if (!images.length) {
    return null;
  }
  return (
    <div
      className={`jp-MLXChat-images${onRemove ? ' jp-mod-pending' : ''}`}
      aria-label={onRemove ? 'Attached images' : 'Images'}
    >
      {images.map((image, i) => (
        <div className="jp-MLXChat-thumb" key={i}>
          <img
            className="jp-MLXChat-image"
            src={image.url}
            alt={image.name || `image ${i + 1}`}
            title={image.name}
          />
          {onRemove && (
            <button
              type="button"
              className="jp-MLXChat-thumbRemove"
              aria-label={`Remove ${image.name || `image ${i + 1}`}`}
              title="Remove"
              onClick={() => onRemove(i)}
            >
              ×
            </button>
          )}
        </div>
      ))}
    </div>
  );
}

/**
 * The prompt box and its controls. A vision model gets an attach button (PNG, JPEG, GIF,
 * WebP) and the pending images' thumbnails; `notice` is a refusal or a hint about images.
 */
export function Composer({
  model,
  vision,
  input,
  images,
  notice,
  streaming,
  inputRef,
  onInput,
  onKeyDown,
  onPaste,
  onFiles,
  onRemoveImage,
  onDismissNotice,
  onSend,
  onStop
}: {
  model: string;
  vision: boolean;
  input: string;
  images: readonly IPendingImage[];
  notice: string | null;
  streaming: boolean;
  inputRef?: React.Ref<HTMLTextAreaElement>;
  onInput: (value: string) => void;
  onKeyDown?: (e: React.KeyboardEvent<HTMLTextAreaElement>) => void;
  onPaste?: (e: React.ClipboardEvent<HTMLTextAreaElement>) => void;
  onFiles: (files: File[]) => void;
  onRemoveImage: (index: number) => void;
  onDismissNotice: () => void;
  onSend: () => void;
  onStop: () => void;
}): JSX.Element {
  const fileRef = React.useRef<HTMLInputElement>(null);
  // Images attached for a vision model, then the model changed: they cannot be sent.
  const stranded = !vision && images.length > 0;
  return (
    <div className="jp-MLXChat-composer">
      {notice && (
        <div className="jp-MLXPanel-notice jp-mod-warning" role="alert">
          <div className="jp-MLXPanel-noticeHead">
            <strong>Images</strong>
            <button
              type="button"
              className="jp-MLXPanel-iconButton"
              aria-label="Dismiss"
              title="Dismiss"
              onClick={onDismissNotice}
            >
              ×
            </button>
          </div>
          <div className="jp-MLXPanel-noticeMessage">{notice}</div>
        </div>
      )}
      {stranded && (
        <div className="jp-MLXPanel-hint jp-mod-warn" role="note">
          {model || 'This model'} does not take images: pick a vision model or
          remove them.
        </div>
      )}
      <ImageStrip images={images} onRemove={onRemoveImage} />
      <form
        className="jp-MLXChat-input"
        onSubmit={e => {
          e.preventDefault();
          onSend();
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
          onChange={e => onInput(e.target.value)}
          onKeyDown={onKeyDown}
          onPaste={onPaste}
        />
        {vision && (
          <>
            <input
              ref={fileRef}
              className="jp-MLXChat-file"
              type="file"
              accept={IMAGE_TYPES.join(',')}
              multiple
              hidden
              aria-hidden="true"
              tabIndex={-1}
              onChange={e => {
                const files = Array.from(e.target.files ?? []);
                e.target.value = '';
                if (files.length) {
                  onFiles(files);
                }
              }}
            />
            <Button
              kind="minimal"
              onClick={() => fileRef.current?.click()}
              disabled={streaming || images.length >= MAX_IMAGES}
              label="Attach images"
              title={`Attach images (PNG, JPEG, GIF, WebP; at most ${MAX_IMAGES}, ${formatBytes(MAX_IMAGE_BYTES)} each) — or paste one`}
            >
              Attach
            </Button>
          </>
        )}
        {streaming ? (
          <Button kind="warn" onClick={onStop} label="Stop generating">
            Stop
          </Button>
        ) : (
          <Button
            type="submit"
            kind="accept"
            disabled={!model || stranded || (!input.trim() && !images.length)}
            label="Send message"
          >
            Send
          </Button>
        )}
      </form>
    </div>
  );
}

/** The image files of a paste (`clipboardData.items`, else `.files`). */
function pastedImages(data: DataTransfer): File[] {
  const files: File[] = [];
  for (const item of Array.from(data.items ?? [])) {
    if (item.kind === 'file' && item.type.startsWith('image/')) {
      const file = item.getAsFile();
      if (file) {
        files.push(file);
      }
    }
  }
  if (!files.length) {
    for (const file of Array.from(data.files ?? [])) {
      if (file.type.startsWith('image/')) {
        files.push(file);
      }
    }
  }
  return files;
}

/** A thinking model's reasoning, folded away (open while it is all there is to see). */
function Reasoning({
  text,
  thinking
}: {
  text: string;
  thinking: boolean;
}): JSX.Element {
  return (
    <details className="jp-MLXChat-reasoning" data-field="reasoning">
      <summary>{thinking ? 'Thinking…' : 'Reasoning'}</summary>
      <div className="jp-MLXChat-reasoningText">{text}</div>
    </details>
  );
}

/** The tool calls of a reply: name and arguments (pretty JSON when they parse). */
function ToolCalls({ calls }: { calls: readonly IToolCall[] }): JSX.Element {
  return (
    <div className="jp-MLXChat-toolCalls" aria-label="Tool calls">
      {calls.map((call, i) => {
        let args = call.arguments;
        try {
          args = JSON.stringify(JSON.parse(call.arguments), null, 2);
        } catch {
          // shown as sent
        }
        return (
          <div
            key={call.id || i}
            className="jp-MLXChat-toolCall"
            data-field="tool-call"
            data-tool={call.name}
          >
            <div className="jp-MLXChat-toolName">
              Tool call: <code>{call.name || '(no name)'}</code>
            </div>
            {args && <pre className="jp-MLXChat-toolArgs">{args}</pre>}
          </div>
        );
      })}
    </div>
  );
}

/** Copy, regenerate (the last reply only) and send to a notebook. */
function ReplyActions({
  turn,
  last,
  busy,
  onRegenerate,
  onSendToNotebook
}: {
  turn: ITurn;
  last: boolean;
  busy: boolean;
  onRegenerate: () => void;
  onSendToNotebook?: () => void;
}): JSX.Element {
  const [copied, setCopied] = React.useState(false);
  React.useEffect(() => {
    if (!copied) {
      return;
    }
    const timer = setTimeout(() => setCopied(false), 1500);
    return () => clearTimeout(timer);
  }, [copied]);
  return (
    <div className="jp-MLXChat-actions" role="group" aria-label="Reply actions">
      <Button
        kind="minimal"
        label="Copy reply"
        title="Copy the reply's Markdown"
        disabled={!turn.content}
        onClick={() => {
          Clipboard.copyToSystem(turn.content);
          setCopied(true);
        }}
      >
        {copied ? 'Copied' : 'Copy'}
      </Button>
      {last && (
        <Button
          kind="minimal"
          label="Regenerate reply"
          title="Ask again for a new reply"
          disabled={busy}
          onClick={onRegenerate}
        >
          Regenerate
        </Button>
      )}
      {onSendToNotebook && (
        <Button
          kind="minimal"
          label="Send to notebook"
          title="Insert this exchange as a code cell (connect() and client.chat) into the notebook in focus"
          disabled={busy}
          onClick={onSendToNotebook}
        >
          Send to notebook
        </Button>
      )}
    </div>
  );
}

function TurnView({
  turn,
  rendermime,
  last,
  busy,
  onRegenerate,
  onSendToNotebook
}: {
  turn: ITurn;
  rendermime?: IRenderMimeRegistry | null;
  last: boolean;
  busy: boolean;
  onRegenerate: () => void;
  onSendToNotebook?: () => void;
}): JSX.Element {
  const assistant = turn.role === 'assistant';
  const error = turn.error
    ? new ApiError(turn.error.message, turn.error.status, turn.error.reason)
    : null;
  return (
    <div
      className={`jp-MLXChat-turn jp-mod-${turn.role}`}
      data-role={turn.role}
      aria-busy={turn.streaming || undefined}
    >
      <div className="jp-MLXChat-role">{assistant ? turn.model : 'You'}</div>
      {turn.images && <ImageStrip images={turn.images.map(url => ({ url }))} />}
      {!turn.images && !!turn.imagesLeftOut && (
        <div className="jp-MLXChat-stats">
          {plural(turn.imagesLeftOut, 'image')} (not kept after a reload)
        </div>
      )}
      {assistant && turn.reasoning && (
        <Reasoning
          text={turn.reasoning}
          thinking={!!turn.streaming && !turn.content}
        />
      )}
      <div className="jp-MLXChat-content">
        {assistant ? (
          <Markdown source={turn.content} rendermime={rendermime} />
        ) : (
          <div className="jp-MLXChat-plain">{turn.content}</div>
        )}
        {turn.streaming && (
          <span className="jp-MLXChat-cursor" aria-hidden="true" />
        )}
      </div>
      {assistant && turn.toolCalls && turn.toolCalls.length > 0 && (
        <ToolCalls calls={turn.toolCalls} />
      )}
      {error && <ErrorNotice error={error} title="The reply failed" />}
      {assistant && !error && <StatsLine turn={turn} />}
      {assistant && !turn.streaming && (
        <ReplyActions
          turn={turn}
          last={last}
          busy={busy}
          onRegenerate={onRegenerate}
          onSendToNotebook={onSendToNotebook}
        />
      )}
    </div>
  );
}

/** The conversations kept for this server: switch, start a new one, delete this one. */
function Conversations({
  history,
  disabled
}: {
  history: ChatHistory;
  disabled: boolean;
}): JSX.Element {
  const { conversations, current } = useStore(history.store);
  const kept = conversations.filter(c => c.turns.length || c.id === current);
  return (
    <div className="jp-MLXChat-conversations">
      <label className="jp-MLXChat-field">
        Conversation
        <select
          className="jp-MLXPanel-select"
          aria-label="Conversation"
          value={current}
          disabled={disabled}
          onChange={e => history.select(e.target.value)}
        >
          {kept.map(c => (
            <option key={c.id} value={c.id}>
              {c.title}
            </option>
          ))}
        </select>
      </label>
      <Button
        kind="minimal"
        disabled={disabled || !history.current.turns.length}
        onClick={() =>
          history.startNew(history.current.model, history.current.system)
        }
        title="Start a new conversation (this one is kept)"
      >
        New chat
      </Button>
      <Button
        kind="minimal"
        disabled={disabled || !history.current.turns.length}
        onClick={() => history.remove(history.current.id)}
        label="Delete conversation"
        title="Delete this conversation"
      >
        Delete
      </Button>
    </div>
  );
}

function ChatView({
  service,
  selection,
  history,
  rendermime,
  onOpenSection,
  onSendToNotebook
}: {
  service: MLXService;
  selection: Store<{ model: string }>;
  history: ChatHistory;
  rendermime?: IRenderMimeRegistry | null;
  onOpenSection: (section: SectionId) => void;
  onSendToNotebook?: SendToNotebook;
}): JSX.Element {
  const { pool, error: serviceError, status } = useStore(service.store);
  const { models: localModels } = useStore(service.models);
  const { model: wanted } = useStore(selection);
  const { conversations, current } = useStore(history.store);
  const conversation =
    conversations.find(c => c.id === current) ?? conversations[0];
  const turns = conversation.turns;
  const system = conversation.system;
  // Embedding, transcription and speech models are in the pool too: not chat models.
  const loaded = chatModels(pool?.models ?? []);
  const profiles = useStore(service.profiles).profiles.map(p => p.name);
  const model =
    loaded.some(m => m.model === wanted) || profiles.includes(wanted)
      ? wanted
      : loaded.some(m => m.model === conversation.model)
        ? conversation.model
        : (loaded[0]?.model ?? '');
  const vision = loaded.find(m => m.model === model)?.kind === 'vision';
  const demos: Record<string, boolean | undefined> = {};
  for (const m of localModels) {
    demos[m.id] = typeof m.demo === 'boolean' ? m.demo : undefined;
  }
  const demo = !!model && isDemoModel({ id: model, demo: demos[model] });

  const [input, setInput] = React.useState('');
  const [maxTokens, setMaxTokens] = React.useState(256);
  const [temperature, setTemperature] = React.useState(0.7);
  const [images, setImages] = React.useState<IPendingImage[]>([]);
  const [notice, setNotice] = React.useState<string | null>(null);
  const [sendError, setSendError] = React.useState<Error | null>(null);
  const imageCount = React.useRef(0);
  const reading = React.useRef(0);
  imageCount.current = images.length;
  const controller = React.useRef<AbortController | null>(null);
  const log = React.useRef<HTMLDivElement>(null);
  const inputRef = React.useRef<HTMLTextAreaElement>(null);
  const loadAction = useAction();
  const streaming = turns.some(t => t.streaming) || !!controller.current;

  React.useEffect(() => {
    const el = log.current;
    if (el) {
      el.scrollTop = el.scrollHeight;
    }
  }, [turns]);
  React.useEffect(
    () => () => {
      controller.current?.abort();
      history.flush();
    },
    [history]
  );

  /** Check and read image files into the pending images; refusals go to the notice. */
  const addImages = async (files: File[]) => {
    const { accepted, refused } = checkImages(
      imageCount.current + reading.current,
      files
    );
    setNotice(refused.length ? refused.join(' ') : null);
    if (!accepted.length) {
      return;
    }
    reading.current += accepted.length;
    try {
      const read = await Promise.all(
        accepted.map(async f => ({
          name: f.name || 'pasted image',
          type: f.type,
          size: f.size,
          url: await readDataURL(f)
        }))
      );
      setImages(imgs => [...imgs, ...read]);
    } catch (err) {
      setNotice(`Could not read the image: ${(err as Error).message}`);
    } finally {
      reading.current -= accepted.length;
    }
  };

  const onPaste = (e: React.ClipboardEvent<HTMLTextAreaElement>) => {
    const files = pastedImages(e.clipboardData);
    if (!files.length) {
      return;
    }
    if (!vision) {
      // The text of the paste (if any) still goes in.
      setNotice(
        `${model || 'This model'} does not take images, so the pasted image was ignored: pick a vision model to send one.`
      );
      return;
    }
    if (!e.clipboardData.getData('text/plain')) {
      e.preventDefault();
    }
    void addImages(files);
  };

  /** Stream a reply to `before` (the conversation up to a user turn) into a new turn. */
  const reply = async (before: ITurn[]) => {
    const id = conversation.id;
    const messages = buildMessages(
      system,
      before.filter(t => !t.error),
      vision
    );
    const replyTurn: ITurn = {
      id: history.nextTurnId(),
      role: 'assistant',
      content: '',
      model,
      streaming: true
    };
    history.update(id, { turns: [...before, replyTurn], model });
    const abort = new AbortController();
    controller.current = abort;
    const patch = (p: Partial<ITurn> | ((t: ITurn) => Partial<ITurn>)) =>
      history.updateTurn(id, replyTurn.id, p);

    // Many deltas per second: collect them and render once per animation frame.
    let pendingText = '';
    let pendingReasoning = '';
    let frame = 0;
    const flush = () => {
      frame = 0;
      const text = pendingText;
      const thought = pendingReasoning;
      pendingText = '';
      pendingReasoning = '';
      if (text || thought) {
        patch(t => ({
          content: t.content + text,
          reasoning: thought ? (t.reasoning ?? '') + thought : t.reasoning
        }));
      }
    };
    const schedule = () => {
      if (!frame) {
        frame = requestAnimationFrame(flush);
      }
    };
    try {
      const result = await streamChat(
        {
          model,
          messages,
          max_tokens: maxTokens > 0 ? maxTokens : undefined,
          temperature
        },
        {
          signal: abort.signal,
          onDelta: piece => {
            pendingText += piece;
            schedule();
          },
          onReasoning: piece => {
            pendingReasoning += piece;
            schedule();
          },
          onToolCalls: calls => patch({ toolCalls: calls })
        },
        service.serverSettings
      );
      if (frame) {
        cancelAnimationFrame(frame);
      }
      patch({
        content: result.text,
        reasoning: result.reasoning || undefined,
        toolCalls: result.toolCalls.length ? result.toolCalls : undefined,
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
      const e = toApiError(err);
      patch({
        streaming: false,
        error: { message: e.message, status: e.status, reason: e.reason }
      });
    } finally {
      controller.current = null;
      history.flush();
      void service.refresh();
      inputRef.current?.focus();
    }
  };

  const send = async () => {
    const text = input.trim();
    const sending = vision ? images : [];
    if ((!text && !sending.length) || !model || streaming) {
      return;
    }
    if (!vision && images.length) {
      return;
    }
    const userTurn: ITurn = {
      id: history.nextTurnId(),
      role: 'user',
      content: text,
      images: sending.length ? sending.map(i => i.url) : undefined
    };
    setInput('');
    setImages([]);
    setNotice(null);
    await reply([...turns, userTurn]);
  };

  /** The last reply again: the same conversation up to its question, a new answer. */
  const regenerate = () => {
    const last = turns.length - 1;
    if (streaming || !model || last < 0 || turns[last].role !== 'assistant') {
      return;
    }
    void reply(turns.slice(0, last));
  };

  /** The exchange of reply `index` (and the conversation before it) as a code cell. */
  const sendToNotebook = onSendToNotebook
    ? (index: number) => {
        const answer = turns[index];
        const code = exchangeCode({
          model: answer.model || model,
          system,
          turns: turns.slice(0, index).filter(t => !t.error),
          reply: answer.content,
          maxTokens,
          temperature
        });
        setSendError(null);
        onSendToNotebook(code).catch(err =>
          setSendError(err instanceof Error ? err : new Error(String(err)))
        );
      }
    : undefined;

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
  const firstLocal = chatModels(localModels).find(
    m => !m.unavailable && !loaded.some(l => l.model === m.id)
  );
  const lastIndex = turns.length - 1;

  return (
    <div className="jp-MLXChat">
      <div className="jp-MLXChat-toolbar">
        <ModelPicker
          models={loaded}
          profiles={profiles}
          value={model}
          disabled={streaming}
          demos={demos}
          onChange={m => {
            selection.set({ model: m });
            history.update(conversation.id, { model: m });
          }}
        />
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
        <Conversations history={history} disabled={streaming} />
      </div>
      <details className="jp-MLXChat-system">
        <summary>System prompt</summary>
        <textarea
          className="jp-MLXPanel-input"
          aria-label="System prompt"
          rows={2}
          value={system}
          onChange={e =>
            history.update(conversation.id, { system: e.target.value })
          }
          placeholder="You are a helpful assistant."
        />
      </details>
      {demo && (
        <div
          className="jp-MLXPanel-hint jp-mod-warn jp-MLXChat-demo"
          role="note"
          data-field="demo-note"
        >
          <strong>{model}</strong> is a demo model with random weights: its
          replies are random words, not answers. It is here to try the panel
          offline; for real answers, download a model in{' '}
          <button
            type="button"
            className="jp-MLXPanel-link"
            onClick={() => onOpenSection('models')}
          >
            Models → Search the Hub
          </button>
          .
        </div>
      )}
      {blocked && serviceError && <ErrorNotice error={serviceError} />}
      {!blocked && pool && !loaded.length && (
        <Empty>
          No chat model is loaded.{' '}
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
            onClick={() => onOpenSection('pool')}
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
      {sendError && (
        <ErrorNotice
          error={sendError}
          title="Could not send to a notebook"
          onDismiss={() => setSendError(null)}
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
            {vision && ' Attach or paste images for it to look at.'}
          </div>
        )}
        {turns.map((t, i) => (
          <TurnView
            key={t.id}
            turn={t}
            rendermime={rendermime}
            last={i === lastIndex}
            busy={streaming || !model}
            onRegenerate={regenerate}
            onSendToNotebook={
              sendToNotebook && t.role === 'assistant' && i > 0
                ? () => sendToNotebook(i)
                : undefined
            }
          />
        ))}
      </div>
      <Composer
        model={model}
        vision={vision}
        input={input}
        images={images}
        notice={notice}
        streaming={streaming}
        inputRef={inputRef}
        onInput={setInput}
        onKeyDown={onKeyDown}
        onPaste={onPaste}
        onFiles={files => void addImages(files)}
        onRemoveImage={i => setImages(imgs => imgs.filter((_, j) => j !== i))}
        onDismissNotice={() => setNotice(null)}
        onSend={() => void send()}
        onStop={stop}
      />
    </div>
  );
}

class ChatContent extends ReactWidget {
  readonly selection = new Store<{ model: string }>({ model: '' });
  readonly history: ChatHistory;

  constructor(
    private readonly _service: MLXService,
    private readonly _options: IChatPanelOptions
  ) {
    super();
    this.addClass('jp-MLXChat-widget');
    let storage: Storage | null = null;
    try {
      storage = window.localStorage;
    } catch {
      storage = null; // storage disabled: conversations last as long as the page
    }
    this.history = new ChatHistory(
      storage,
      historyKey(_service.serverSettings.baseUrl)
    );
  }

  dispose(): void {
    if (!this.isDisposed) {
      this.history.dispose();
    }
    super.dispose();
  }

  protected render(): JSX.Element {
    return (
      <ChatView
        service={this._service}
        selection={this.selection}
        history={this.history}
        rendermime={this._options.rendermime}
        onOpenSection={this._options.onOpenSection}
        onSendToNotebook={this._options.onSendToNotebook}
      />
    );
  }
}

export interface IChatPanelOptions {
  /** Opens a section of the sidebar. */
  onOpenSection: (section: SectionId) => void;
  /** JupyterLab's rendermime, for Markdown replies (plain text without it). */
  rendermime?: IRenderMimeRegistry | null;
  onSendToNotebook?: SendToNotebook;
}

export class ChatPanel extends MainAreaWidget<ChatContent> {
  constructor(service: MLXService, options: IChatPanelOptions) {
    super({ content: new ChatContent(service, options) });
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
