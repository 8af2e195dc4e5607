/**
 * Inline completion: ghost-text suggestions in notebook cells and files, streamed from a
 * loaded model over `POST mlx/v1/completions` (`stream: true`), for JupyterLab's inline
 * completer (provider id `jupyter-mlx-manager`).
 *
 * The prompt is the code before the cursor: the code cells above and the current cell up to
 * the cursor (fill-in-the-middle with the text after it when the server describes the model's
 * FIM tokens). A new request (the user typed on) aborts the pending one; the server then
 * cancels it in the runner. Off until `inlineCompletionModel` names a model; enabling and
 * debounce are the inline completer's own per-provider settings.
 */
import type {
  CompletionHandler,
  IInlineCompletionContext,
  IInlineCompletionItem,
  IInlineCompletionList,
  IInlineCompletionProvider
} from '@jupyterlab/completer';
import { ServerConnection } from '@jupyterlab/services';
import type { ISettingRegistry } from '@jupyterlab/settingregistry';

import { fetchResponse, requestAPI } from './api';
import { SSEParser } from './sse';

export const PROVIDER_ID = 'jupyter-mlx-manager';

/** Context sent to the model, at most (characters): the nearest code counts most. */
export const MAX_PREFIX_CHARS = 6000;
export const MAX_SUFFIX_CHARS = 2000;

/** What the server accepts in X-MLX-Kernel-Id / X-MLX-Cell-Id. */
const ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export interface IInlineSettings {
  /** The model id; empty: inline completion is off. */
  model: string;
  maxTokens: number;
}

export const DEFAULT_MAX_TOKENS = 64;

/** A model's fill-in-the-middle tokens, when the server describes them. */
export interface IFimTokens {
  prefix: string;
  suffix: string;
  middle: string;
}

/** Where the cursor is: the code around it and who is asking. */
export interface IEditorContext {
  /** The code cells above, then the current cell up to the cursor. */
  prefix: string;
  /** The rest of the current cell. */
  suffix: string;
  kernelId: string | null;
  cellId: string | null;
}

function cellSource(cell: any): string {
  const shared = cell?.model?.sharedModel;
  if (shared && typeof shared.getSource === 'function') {
    return String(shared.getSource());
  }
  return typeof shared?.source === 'string' ? shared.source : '';
}

/**
 * The context of a request from the widget the completer runs in: a notebook panel (its
 * cells above the active one), or any editor (the request's text only).
 */
export function gatherContext(
  request: CompletionHandler.IRequest,
  widget: any,
  session?: { kernel?: { id?: string } | null } | null
): IEditorContext {
  const text = request.text ?? '';
  const offset = Math.max(
    0,
    Math.min(request.offset ?? text.length, text.length)
  );
  let prefix = text.slice(0, offset);
  const suffix = text.slice(offset, offset + MAX_SUFFIX_CHARS);
  let cellId: string | null = null;
  const notebook = widget?.content;
  const cells: any[] | undefined = notebook?.widgets;
  if (Array.isArray(cells) && typeof notebook.activeCellIndex === 'number') {
    const index = notebook.activeCellIndex;
    const above: string[] = [];
    let size = prefix.length;
    for (let i = index - 1; i >= 0 && size < MAX_PREFIX_CHARS; i--) {
      const cell = cells[i];
      if (cell?.model?.type !== 'code') {
        continue;
      }
      const source = cellSource(cell);
      if (source.trim()) {
        above.unshift(source);
        size += source.length + 2;
      }
    }
    if (above.length) {
      prefix = above.join('\n\n') + '\n\n' + prefix;
    }
    const id = cells[index]?.model?.id;
    cellId = typeof id === 'string' && ID.test(id) ? id : null;
  }
  if (prefix.length > MAX_PREFIX_CHARS) {
    prefix = prefix.slice(prefix.length - MAX_PREFIX_CHARS);
    const newline = prefix.indexOf('\n'); // start at a whole line
    if (newline >= 0 && newline < 200) {
      prefix = prefix.slice(newline + 1);
    }
  }
  const kernel =
    session?.kernel?.id ?? widget?.sessionContext?.session?.kernel?.id;
  return {
    prefix,
    suffix,
    kernelId: typeof kernel === 'string' && ID.test(kernel) ? kernel : null,
    cellId
  };
}

export interface ICompletionRequest {
  body: {
    model: string;
    prompt: string;
    max_tokens: number;
    stream: true;
    temperature: number;
    stop: string[];
  };
  headers: Record<string, string>;
}

/**
 * The `mlx/v1/completions` body and headers for a context: fill-in-the-middle when the
 * model has FIM tokens and there is text after the cursor, else prefix completion. In the
 * middle of a line the suggestion ends with that line.
 */
export function buildCompletionRequest(
  context: IEditorContext,
  settings: IInlineSettings,
  fim: IFimTokens | null = null
): ICompletionRequest {
  const useFim = fim !== null && context.suffix.trim() !== '';
  const prompt = useFim
    ? `${fim.prefix}${context.prefix}${fim.suffix}${context.suffix}${fim.middle}`
    : context.prefix;
  const restOfLine = context.suffix.split('\n', 1)[0];
  const stop = restOfLine.trim() ? ['\n'] : ['\n\n\n'];
  const headers: Record<string, string> = {
    'Content-Type': 'application/json'
  };
  if (context.kernelId) {
    headers['X-MLX-Kernel-Id'] = context.kernelId;
    if (context.cellId) {
      headers['X-MLX-Cell-Id'] = context.cellId;
    }
  }
  const maxTokens = Math.max(
    1,
    Math.min(1024, Math.floor(settings.maxTokens) || DEFAULT_MAX_TOKENS)
  );
  return {
    body: {
      model: settings.model,
      prompt,
      max_tokens: maxTokens,
      stream: true,
      temperature: 0,
      stop
    },
    headers
  };
}

/** A suggestion growing as its stream arrives; `updates()` yields the whole text so far. */
export class Suggestion {
  text = '';
  done = false;
  error: string | null = null;

  push(piece: string): void {
    if (this.done || !piece) {
      return;
    }
    this.text += piece;
    this._notify();
  }

  finish(error: string | null = null): void {
    if (this.done) {
      return;
    }
    this.done = true;
    this.error = error;
    this._notify();
  }

  async *updates(): AsyncGenerator<string> {
    let sent = 0; // the empty start is not worth an update
    for (;;) {
      if (this.text.length !== sent) {
        sent = this.text.length;
        yield this.text;
      }
      if (this.done) {
        return;
      }
      await new Promise<void>(resolve => this._waiters.push(resolve));
    }
  }

  private _notify(): void {
    const waiters = this._waiters;
    this._waiters = [];
    waiters.forEach(w => w());
  }

  private _waiters: (() => void)[] = [];
}

export type FetchFn = (
  url: string,
  init: RequestInit,
  settings?: ServerConnection.ISettings
) => Promise<Response>;

/** Read a completions stream into `suggestion` (text of `choices[0]`, in-band errors). */
export async function readStream(
  response: Response,
  suggestion: Suggestion
): Promise<void> {
  const reader = response.body?.getReader();
  if (!reader) {
    suggestion.finish('empty reply');
    return;
  }
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  for (;;) {
    const { value, done } = await reader.read();
    const events = done
      ? parser.end()
      : parser.feed(decoder.decode(value, { stream: true }));
    for (const event of events) {
      const data = event.data.trim();
      if (data === '[DONE]') {
        suggestion.finish();
        return;
      }
      let json: any;
      try {
        json = JSON.parse(data);
      } catch {
        continue;
      }
      if (json?.error) {
        suggestion.finish(String(json.error.message || 'generation failed'));
        return;
      }
      const text = json?.choices?.[0]?.text;
      if (typeof text === 'string') {
        suggestion.push(text);
      }
    }
    if (done) {
      suggestion.finish();
      return;
    }
  }
}

interface IPending {
  token: string;
  controller: AbortController;
  suggestion: Suggestion;
}

/** JupyterLab's inline completer provider for MLX models. */
export class MLXInlineProvider implements IInlineCompletionProvider {
  readonly identifier = PROVIDER_ID;
  readonly name = 'MLX';
  /** Defaults of the inline completer's settings for this provider: a short debounce, so
   * a fast typist does not start (and abort) a generation per key. */
  readonly schema: ISettingRegistry.IProperty = {
    type: 'object',
    default: { debouncerDelay: 250, timeout: 15000 }
  };

  constructor(
    private readonly _serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings(),
    private readonly _fetch: FetchFn = fetchResponse
  ) {}

  get settings(): IInlineSettings {
    return this._settings;
  }

  set settings(value: IInlineSettings) {
    if (value.model !== this._settings.model) {
      this.cancel();
    }
    this._settings = { ...value };
  }

  /** Whether a model is chosen (otherwise every fetch answers nothing at once). */
  get enabled(): boolean {
    return this._settings.model.trim() !== '';
  }

  async fetch(
    request: CompletionHandler.IRequest,
    context: IInlineCompletionContext
  ): Promise<IInlineCompletionList<IInlineCompletionItem>> {
    // A new request means the user typed on: the pending suggestion is stale.
    this.cancel();
    if (!this.enabled) {
      return { items: [] };
    }
    const editor = gatherContext(request, context.widget, context.session);
    if (!editor.prefix.trim()) {
      return { items: [] };
    }
    const token = String(++this._counter);
    const controller = new AbortController();
    const suggestion = new Suggestion();
    this._pending = { token, controller, suggestion };
    const model = this._settings.model.trim();
    const fim = await this._fimTokens(model);
    if (controller.signal.aborted) {
      return { items: [] };
    }
    const { body, headers } = buildCompletionRequest(
      editor,
      { ...this._settings, model },
      fim
    );
    void this._run(body, headers, controller, suggestion);
    return { items: [{ insertText: '', isIncomplete: true, token }] };
  }

  async *stream(
    token: string
  ): AsyncGenerator<{ response: IInlineCompletionItem }> {
    const pending = this._pending;
    if (!pending || pending.token !== token) {
      return;
    }
    for await (const text of pending.suggestion.updates()) {
      if (this._pending !== pending) {
        return; // superseded: the next request shows its own suggestion
      }
      yield {
        response: {
          insertText: text,
          isIncomplete: !pending.suggestion.done,
          token
        }
      };
    }
    if (pending.suggestion.error && this._pending === pending) {
      yield {
        response: {
          insertText: pending.suggestion.text,
          isIncomplete: false,
          error: { message: pending.suggestion.error }
        }
      };
    }
  }

  /** Abort the pending request (the server cancels it in the runner). */
  cancel(): void {
    const pending = this._pending;
    this._pending = null;
    if (pending) {
      pending.controller.abort();
      pending.suggestion.finish();
    }
  }

  dispose(): void {
    this.cancel();
  }

  private async _run(
    body: ICompletionRequest['body'],
    headers: Record<string, string>,
    controller: AbortController,
    suggestion: Suggestion
  ): Promise<void> {
    try {
      const base = this._serverSettings.baseUrl;
      const url =
        (base.endsWith('/') ? base : base + '/') + 'mlx/v1/completions';
      const response = await this._fetch(
        url,
        {
          method: 'POST',
          body: JSON.stringify(body),
          headers,
          signal: controller.signal
        },
        this._serverSettings
      );
      await readStream(response, suggestion);
    } catch (err) {
      suggestion.finish(
        controller.signal.aborted
          ? null
          : err instanceof Error
            ? err.message
            : String(err)
      );
    }
  }

  /** The model's FIM tokens when the server describes them (`fim` of models/local/{id}). */
  private async _fimTokens(model: string): Promise<IFimTokens | null> {
    if (this._fim.has(model)) {
      return this._fim.get(model) ?? null;
    }
    let tokens: IFimTokens | null = null;
    if (!model.startsWith('remote/')) {
      try {
        const path = model.split('/').map(encodeURIComponent).join('/');
        const info = await requestAPI<any>(
          `models/local/${path}`,
          {},
          this._serverSettings
        );
        const fim = info?.fim;
        if (
          fim &&
          typeof fim.prefix === 'string' &&
          typeof fim.suffix === 'string' &&
          typeof fim.middle === 'string'
        ) {
          tokens = {
            prefix: fim.prefix,
            suffix: fim.suffix,
            middle: fim.middle
          };
        }
      } catch {
        tokens = null; // not a local model, or an older server: prefix completion
      }
    }
    this._fim.set(model, tokens);
    return tokens;
  }

  private _settings: IInlineSettings = {
    model: '',
    maxTokens: DEFAULT_MAX_TOKENS
  };
  private _pending: IPending | null = null;
  private _counter = 0;
  private _fim = new Map<string, IFimTokens | null>();
}
