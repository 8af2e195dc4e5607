/**
 * Streaming chat completions over `POST mlx/v1/chat/completions` (`stream: true`).
 *
 * `EventSource` cannot POST, so the body is read with `fetch` + `ReadableStream` through
 * `ServerConnection.makeRequest` (Jupyter's cookie/XSRF/token handling) and parsed with
 * `SSEParser`. An `AbortSignal` stops the stream; the server then cancels the generation.
 */
import { ServerConnection } from '@jupyterlab/services';

import { ApiError, fetchResponse } from './api';
import { formatBytes } from './format';
import { SSEParser } from './sse';

/** OpenAI chat content parts: text, and images as data URLs (SPEC "Vision"). */
export type ChatContentPart =
  | { type: 'text'; text: string }
  | { type: 'image_url'; image_url: { url: string } };

export interface IChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string | ChatContentPart[];
}

export interface IChatRequest {
  model: string;
  messages: IChatMessage[];
  max_tokens?: number;
  temperature?: number;
}

// -- images ---------------------------------------------------------------------------------

/** Images one request may carry, and the bytes of each (the server's defaults, SPEC). */
export const MAX_IMAGES = 8;
export const MAX_IMAGE_BYTES = 20 * 1024 * 1024;
/** The types the attach button offers and a paste may add. */
export const IMAGE_TYPES = [
  'image/png',
  'image/jpeg',
  'image/gif',
  'image/webp'
];

/** Kinds the chat panel can talk to (SPEC "kinds"); no kind = an older server or a remote model. */
export function isChatKind(kind: string | null | undefined): boolean {
  return !kind || kind === 'text' || kind === 'vision';
}

/** Only the chat models (text, vision) of a list of pool entries or local models. */
export function chatModels<T extends { kind?: string | null }>(
  models: readonly T[]
): T[] {
  return models.filter(m => isChatKind(m.kind));
}

/** An image waiting to be sent. */
export interface IPendingImage {
  name: string;
  type: string;
  size: number;
  /** `data:image/…;base64,…` */
  url: string;
}

/** What `checkImages` needs of a `File`. */
export interface IImageFile {
  name: string;
  type: string;
  size: number;
}

/**
 * Which of `files` may join the `pending` images: images of the offered types, at most
 * `MAX_IMAGE_BYTES` each, `MAX_IMAGES` in all. The rest are refused, each with a message.
 */
export function checkImages<F extends IImageFile>(
  pending: number,
  files: readonly F[]
): { accepted: F[]; refused: string[] } {
  const accepted: F[] = [];
  const refused: string[] = [];
  let over = 0;
  for (const file of files) {
    const name = file.name || 'pasted image';
    if (!IMAGE_TYPES.includes(file.type)) {
      refused.push(`${name} is not a PNG, JPEG, GIF or WebP image.`);
    } else if (file.size > MAX_IMAGE_BYTES) {
      refused.push(
        `${name} is over ${formatBytes(MAX_IMAGE_BYTES)}, the most an image may be.`
      );
    } else if (pending + accepted.length >= MAX_IMAGES) {
      over++;
    } else {
      accepted.push(file);
    }
  }
  if (over) {
    refused.push(
      `At most ${MAX_IMAGES} images per message: ${over} not added.`
    );
  }
  return { accepted, refused };
}

/** A user message's content: the text alone, or the text and the images as content parts. */
export function userContent(
  text: string,
  images: readonly string[] = []
): string | ChatContentPart[] {
  if (!images.length) {
    return text;
  }
  const parts: ChatContentPart[] = [];
  if (text) {
    parts.push({ type: 'text', text });
  }
  for (const url of images) {
    parts.push({ type: 'image_url', image_url: { url } });
  }
  return parts;
}

/** A turn of the conversation, as `buildMessages` reads it. */
export interface IHistoryTurn {
  role: 'user' | 'assistant';
  content: string;
  images?: readonly string[];
}

/**
 * The messages of one request: the system prompt, the history and the new user turn (the
 * last of `turns`). Images go only to a vision model, and at most `MAX_IMAGES` in all (the
 * server's per-request limit): the newest are kept, older turns keep their text.
 */
export function buildMessages(
  system: string,
  turns: readonly IHistoryTurn[],
  vision: boolean
): IChatMessage[] {
  let budget = vision ? MAX_IMAGES : 0;
  const out: IChatMessage[] = [];
  for (let i = turns.length - 1; i >= 0; i--) {
    const t = turns[i];
    const all = t.role === 'user' ? (t.images ?? []) : [];
    const images =
      budget > 0 ? all.slice(Math.max(0, all.length - budget)) : [];
    budget -= images.length;
    const content = userContent(t.content, images);
    if (content.length) {
      out.push({ role: t.role, content });
    }
  }
  if (system.trim()) {
    out.push({ role: 'system', content: system.trim() });
  }
  return out.reverse();
}

/** A file's bytes as a data URL (`FileReader`). */
export function readDataURL(file: Blob): Promise<string> {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () =>
      reject(reader.error ?? new Error('could not read the file'));
    reader.readAsDataURL(file);
  });
}

export interface IUsage {
  prompt_tokens?: number;
  completion_tokens?: number;
  total_tokens?: number;
}

/** A piece of a streamed tool call (OpenAI's `delta.tool_calls[i]`); pieces of one call share `index`. */
export interface IToolCallDelta {
  index: number;
  id?: string;
  name?: string;
  arguments?: string;
}

/** A tool call the model made, assembled from its pieces. */
export interface IToolCall {
  id: string;
  name: string;
  arguments: string;
}

/** What one streamed chunk means to the chat panel. */
export type ChunkResult =
  | {
      kind: 'delta';
      text: string;
      finishReason: string | null;
      /** `delta.reasoning_content` (a thinking model's reasoning), when the chunk has some. */
      reasoning?: string;
      toolCalls?: IToolCallDelta[];
    }
  | { kind: 'usage'; usage: IUsage }
  | { kind: 'done' }
  | { kind: 'error'; message: string; code: string }
  | { kind: 'ignore' };

/**
 * Interpret the `data:` of one SSE event of a chat stream: text deltas, the usage chunk
 * (`stream_options.include_usage`), `[DONE]`, or an in-band error (OpenAI's envelope).
 */
export function parseChunk(data: string): ChunkResult {
  if (data.trim() === '[DONE]') {
    return { kind: 'done' };
  }
  let json: any;
  try {
    json = JSON.parse(data);
  } catch {
    return { kind: 'ignore' };
  }
  if (json && typeof json.error === 'object' && json.error) {
    return {
      kind: 'error',
      message: String(json.error.message || 'generation failed'),
      code: String(json.error.code || json.error.type || '')
    };
  }
  const choice = Array.isArray(json?.choices) ? json.choices[0] : undefined;
  if (!choice) {
    return json?.usage
      ? { kind: 'usage', usage: json.usage }
      : { kind: 'ignore' };
  }
  const delta = choice.delta ?? {};
  const text = typeof delta.content === 'string' ? delta.content : '';
  const result: ChunkResult = {
    kind: 'delta',
    text,
    finishReason: choice.finish_reason ?? null
  };
  const reasoning = delta.reasoning_content ?? delta.reasoning;
  if (typeof reasoning === 'string' && reasoning) {
    result.reasoning = reasoning;
  }
  if (Array.isArray(delta.tool_calls) && delta.tool_calls.length) {
    result.toolCalls = delta.tool_calls.map((c: any, i: number) => ({
      index: typeof c?.index === 'number' ? c.index : i,
      id: typeof c?.id === 'string' ? c.id : undefined,
      name: typeof c?.function?.name === 'string' ? c.function.name : undefined,
      arguments:
        typeof c?.function?.arguments === 'string'
          ? c.function.arguments
          : c?.function?.arguments !== undefined
            ? JSON.stringify(c.function.arguments)
            : undefined
    }));
  }
  return result;
}

/** Add streamed tool-call pieces to the calls so far (a new index starts a call). */
export function mergeToolCalls(
  calls: readonly IToolCall[],
  pieces: readonly IToolCallDelta[]
): IToolCall[] {
  const out = calls.map(c => ({ ...c }));
  for (const piece of pieces) {
    const call = out[piece.index];
    if (call) {
      call.id = call.id || piece.id || '';
      call.name += piece.name ?? '';
      call.arguments += piece.arguments ?? '';
    } else {
      out[piece.index] = {
        id: piece.id ?? '',
        name: piece.name ?? '',
        arguments: piece.arguments ?? ''
      };
    }
  }
  return out.filter(Boolean);
}

export interface IChatStats {
  /** Milliseconds from sending the request to the first text. */
  ttftMs: number | null;
  /** Completion tokens per second after the first one (decode speed). */
  tokensPerSecond: number | null;
  completionTokens: number | null;
  totalMs: number;
}

/**
 * Timing of one reply. `completionTokens` is the server's count when it sent usage, else
 * the number of text chunks (one token each on this server).
 */
export function computeStats(t: {
  startedAt: number;
  firstTokenAt: number | null;
  endedAt: number;
  completionTokens: number | null;
}): IChatStats {
  const ttftMs =
    t.firstTokenAt === null ? null : Math.max(0, t.firstTokenAt - t.startedAt);
  let tokensPerSecond: number | null = null;
  const n = t.completionTokens;
  if (t.firstTokenAt !== null && n !== null && n > 1) {
    const seconds = (t.endedAt - t.firstTokenAt) / 1000;
    tokensPerSecond = seconds > 0 ? (n - 1) / seconds : null;
  }
  return {
    ttftMs,
    tokensPerSecond,
    completionTokens: n,
    totalMs: Math.max(0, t.endedAt - t.startedAt)
  };
}

export interface IStreamHandlers {
  /** Each piece of text as it arrives. */
  onDelta?: (text: string) => void;
  /** Each piece of reasoning (`reasoning_content`) as it arrives. */
  onReasoning?: (text: string) => void;
  /** The tool calls so far, whenever one grows. */
  onToolCalls?: (calls: IToolCall[]) => void;
  /** `performance.now()`-like clock, for tests. */
  now?: () => number;
}

export interface IChatResult {
  text: string;
  reasoning: string;
  toolCalls: IToolCall[];
  finishReason: string | null;
  usage: IUsage | null;
  stats: IChatStats;
  /** True when the caller aborted (the text is what arrived until then). */
  stopped: boolean;
}

function isAbort(err: unknown, signal?: AbortSignal): boolean {
  return !!signal?.aborted || (err as Error)?.name === 'AbortError';
}

/** Stream one chat completion. Throws `ApiError` on an error reply or an in-band error. */
export async function streamChat(
  request: IChatRequest,
  options: IStreamHandlers & { signal?: AbortSignal } = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<IChatResult> {
  const now = options.now ?? (() => performance.now());
  const startedAt = now();
  let firstTokenAt: number | null = null;
  let chunks = 0;
  let text = '';
  let reasoning = '';
  let toolCalls: IToolCall[] = [];
  let finishReason: string | null = null;
  let usage: IUsage | null = null;
  let stopped = false;

  const finish = (): IChatResult => {
    const endedAt = now();
    const tokens = usage?.completion_tokens ?? (chunks || null);
    return {
      text,
      reasoning,
      toolCalls,
      finishReason,
      usage,
      stopped,
      stats: computeStats({
        startedAt,
        firstTokenAt,
        endedAt,
        completionTokens: tokens
      })
    };
  };

  const base = settings.baseUrl.endsWith('/')
    ? settings.baseUrl
    : settings.baseUrl + '/';
  const body = {
    ...request,
    stream: true,
    stream_options: { include_usage: true }
  };
  let response: Response;
  try {
    response = await fetchResponse(
      base + 'mlx/v1/chat/completions',
      {
        method: 'POST',
        body: JSON.stringify(body),
        headers: {
          Accept: 'text/event-stream',
          'Content-Type': 'application/json'
        },
        signal: options.signal
      },
      settings
    );
  } catch (err) {
    if (isAbort(err, options.signal)) {
      stopped = true;
      return finish();
    }
    throw err;
  }
  if (!response.body) {
    throw new ApiError(
      'The server sent no stream.',
      response.status,
      'no_stream'
    );
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      const events = done
        ? parser.end()
        : parser.feed(decoder.decode(value, { stream: true }));
      for (const event of events) {
        const chunk = parseChunk(event.data);
        if (chunk.kind === 'delta') {
          if (chunk.reasoning || chunk.toolCalls) {
            if (firstTokenAt === null) {
              firstTokenAt = now();
            }
          }
          if (chunk.reasoning) {
            chunks++;
            reasoning += chunk.reasoning;
            options.onReasoning?.(chunk.reasoning);
          }
          if (chunk.toolCalls) {
            toolCalls = mergeToolCalls(toolCalls, chunk.toolCalls);
            options.onToolCalls?.(toolCalls);
          }
          if (chunk.text) {
            if (firstTokenAt === null) {
              firstTokenAt = now();
            }
            chunks++;
            text += chunk.text;
            options.onDelta?.(chunk.text);
          }
          finishReason = chunk.finishReason ?? finishReason;
        } else if (chunk.kind === 'usage') {
          usage = chunk.usage;
        } else if (chunk.kind === 'error') {
          throw new ApiError(chunk.message, 500, chunk.code);
        } else if (chunk.kind === 'done') {
          return finish();
        }
      }
      if (done) {
        return finish();
      }
    }
  } catch (err) {
    if (isAbort(err, options.signal)) {
      stopped = true;
      return finish();
    }
    throw err;
  } finally {
    reader.cancel().catch(() => undefined);
  }
}
