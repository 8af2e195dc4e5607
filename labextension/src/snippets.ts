/**
 * Python for "Send to notebook": an exchange of the chat panel as a code cell that asks the
 * same model again through the kernel client (`connect()`). No DOM (unit-tested in node).
 */

/** A Python string literal of any text (JSON's escapes are all valid in Python). */
export function pyString(text: string): string {
  return JSON.stringify(text);
}

export interface IExchange {
  model: string;
  system: string;
  /** The conversation up to and with the question: user and assistant turns. */
  turns: readonly {
    role: 'user' | 'assistant';
    content: string;
    images?: readonly string[];
    imagesLeftOut?: number;
  }[];
  /** The reply the chat panel got (shown as a comment). */
  reply?: string;
  maxTokens?: number;
  temperature?: number;
}

/** Lines of the reply kept in the comment. */
const REPLY_LINES = 20;

/** The code cell of one exchange. */
export function exchangeCode(exchange: IExchange): string {
  const messages: string[] = [];
  if (exchange.system.trim()) {
    messages.push(
      `    {"role": "system", "content": ${pyString(exchange.system.trim())}},`
    );
  }
  let imagesLeftOut = 0;
  for (const turn of exchange.turns) {
    imagesLeftOut += (turn.images?.length ?? 0) + (turn.imagesLeftOut ?? 0);
    if (turn.content) {
      messages.push(
        `    {"role": ${pyString(turn.role)}, "content": ${pyString(turn.content)}},`
      );
    }
  }
  const params = [`${pyString(exchange.model)}`, 'messages'];
  if (typeof exchange.maxTokens === 'number' && exchange.maxTokens > 0) {
    params.push(`max_tokens=${Math.round(exchange.maxTokens)}`);
  }
  if (
    typeof exchange.temperature === 'number' &&
    isFinite(exchange.temperature)
  ) {
    params.push(`temperature=${exchange.temperature}`);
  }
  const lines = [
    `# From the MLX chat panel: ask ${exchange.model} again from this notebook.`,
    'from jupyter_mlx_manager import connect',
    '',
    'client = connect()',
    'messages = [',
    ...messages,
    ']'
  ];
  if (imagesLeftOut) {
    lines.push(
      `# ${imagesLeftOut === 1 ? '1 image was' : `${imagesLeftOut} images were`} left out: add them to a message's content`,
      '# as a list, e.g. ["describe this", PIL.Image.open("photo.png")].'
    );
  }
  lines.push(`reply = client.chat(${params.join(', ')})`, 'reply');
  const reply = (exchange.reply ?? '').trim();
  if (reply) {
    const replyLines = reply.split('\n');
    lines.push(
      '',
      '# The reply in the chat panel was:',
      ...replyLines.slice(0, REPLY_LINES).map(l => `# ${l}`.replace(/\s+$/, ''))
    );
    if (replyLines.length > REPLY_LINES) {
      lines.push(`# … (${replyLines.length - REPLY_LINES} more lines)`);
    }
  }
  return lines.join('\n');
}

/** A first code cell for a model that is not for chatting: what its kind does, via `connect()`. */
export function kindCode(model: string, kind: string): string | null {
  const use: Record<string, string[]> = {
    embedding: [
      `vectors = client.embed(${pyString(model)}, ["first text", "second text"])`,
      'vectors.shape  # one row per text'
    ],
    transcription: [
      '# a WAV, FLAC, MP3 or Ogg Vorbis file (a path, or its bytes)',
      `text = client.transcribe(${pyString(model)}, "recording.wav")`,
      'text'
    ],
    speech: [
      `audio = client.speak(${pyString(model)}, "Hello from MLX")`,
      'audio  # plays in the notebook'
    ]
  };
  if (!use[kind]) {
    return null;
  }
  const article = /^[aeiou]/.test(kind) ? 'an' : 'a';
  return [
    `# ${model} (${article} ${kind} model) from this notebook.`,
    'from jupyter_mlx_manager import connect',
    '',
    'client = connect()',
    ...use[kind]
  ].join('\n');
}
