/**
 * The chat panel (main area): pick a loaded chat model (text or vision), stream a reply, stop
 * it; each reply shows its time to first token and tokens per second. A vision model also
 * takes images (attached or pasted), sent as `image_url` content parts (data URLs).
 */
import { MainAreaWidget } from '@jupyterlab/apputils';
import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { ApiError, IPoolModel, toApiError } from './api';
import {
  buildMessages,
  chatModels,
  checkImages,
  IChatStats,
  IMAGE_TYPES,
  IPendingImage,
  MAX_IMAGE_BYTES,
  MAX_IMAGES,
  readDataURL,
  streamChat
} from './chat';
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
  /** Data URLs of the images sent with a user turn. */
  images?: string[];
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

/** The model picker: the loaded chat models only (the caller filters, `chatModels`). */
export function ModelPicker({
  models,
  value,
  disabled,
  onChange
}: {
  models: readonly IPoolModel[];
  value: string;
  disabled?: boolean;
  onChange: (model: string) => void;
}): JSX.Element {
  return (
    <label className="jp-MLXChat-field">
      Model
      <select
        className="jp-MLXPanel-select"
        aria-label="Chat model"
        value={value}
        disabled={!models.length || disabled}
        onChange={e => onChange(e.target.value)}
      >
        {!models.length && <option value="">no chat model loaded</option>}
        {models.map(m => (
          <option key={m.model} value={m.model}>
            {m.kind === 'vision' ? `${m.model} (vision)` : m.model}
          </option>
        ))}
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
              title={`Attach images (PNG, JPEG, GIF, WebP; at most ${MAX_IMAGES}, ${MAX_IMAGE_BYTES / (1024 * 1024)} MB each) — or paste one`}
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
  // Embedding, transcription and speech models are in the pool too: not chat models.
  const loaded = chatModels(pool?.models ?? []);
  const model = loaded.some(m => m.model === wanted)
    ? wanted
    : (loaded[0]?.model ?? '');
  const vision = loaded.find(m => m.model === model)?.kind === 'vision';

  const [turns, setTurns] = React.useState<ITurn[]>([]);
  const [input, setInput] = React.useState('');
  const [maxTokens, setMaxTokens] = React.useState(256);
  const [temperature, setTemperature] = React.useState(0.7);
  const [system, setSystem] = React.useState('');
  const [images, setImages] = React.useState<IPendingImage[]>([]);
  const [notice, setNotice] = React.useState<string | null>(null);
  const imageCount = React.useRef(0);
  const reading = React.useRef(0);
  imageCount.current = images.length;
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
      id: nextId.current++,
      role: 'user',
      content: text,
      images: sending.length ? sending.map(i => i.url) : undefined
    };
    const history = buildMessages(
      system,
      [...turns.filter(t => !t.error), userTurn],
      vision
    );
    const reply: ITurn = {
      id: nextId.current++,
      role: 'assistant',
      content: '',
      model,
      streaming: true
    };
    setTurns(ts => [...ts, userTurn, reply]);
    setInput('');
    setImages([]);
    setNotice(null);
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
  const firstLocal = chatModels(localModels).find(
    m => !m.unavailable && !loaded.some(l => l.model === m.id)
  );

  return (
    <div className="jp-MLXChat">
      <div className="jp-MLXChat-toolbar">
        <ModelPicker
          models={loaded}
          value={model}
          disabled={streaming}
          onChange={m => selection.set({ model: m })}
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
            {vision && ' Attach or paste images for it to look at.'}
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
            {t.images && <ImageStrip images={t.images.map(url => ({ url }))} />}
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
