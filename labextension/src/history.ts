/**
 * The chat panel's conversations, kept per notebook server in the browser's `localStorage`
 * (the key names the server's base URL) so that they come back after a reload. Images are
 * not kept (data URLs would fill the storage quota): a restored turn says how many it had.
 * No React and no JupyterLab imports here (unit-tested in node).
 */
import { IChatStats, IToolCall } from './chat';
import { Store } from './store';

/** One turn of a conversation. */
export interface ITurn {
  id: number;
  role: 'user' | 'assistant';
  content: string;
  /** Data URLs of the images sent with a user turn (this page only, never stored). */
  images?: string[];
  /** Images a restored user turn had (they are not stored). */
  imagesLeftOut?: number;
  /** A thinking model's reasoning (`reasoning_content`). */
  reasoning?: string;
  toolCalls?: IToolCall[];
  model?: string;
  streaming?: boolean;
  stopped?: boolean;
  stats?: IChatStats;
  finishReason?: string | null;
  error?: { message: string; status: number; reason: string };
}

export interface IConversation {
  id: string;
  title: string;
  /** The model last used in it. */
  model: string;
  system: string;
  turns: ITurn[];
  /** ms since the epoch. */
  updated: number;
}

export interface IHistoryState {
  conversations: IConversation[];
  current: string;
}

/** What the store needs of `localStorage` (tests pass a map). */
export interface IStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** Conversations kept; the oldest go first. */
export const MAX_CONVERSATIONS = 30;
const TITLE_LENGTH = 60;
const VERSION = 1;

/** The storage key of one notebook server's conversations. */
export function historyKey(baseUrl: string): string {
  return `jupyter-mlx-manager:chat:v${VERSION}:${baseUrl}`;
}

/** A conversation's title: its first user message's first line, shortened. */
export function titleOf(turns: readonly ITurn[]): string {
  const first = turns.find(t => t.role === 'user' && t.content.trim());
  if (!first) {
    return 'New chat';
  }
  const line = first.content.trim().split('\n')[0].trim();
  return line.length > TITLE_LENGTH
    ? `${line.slice(0, TITLE_LENGTH - 1).replace(/\s+$/, '')}…`
    : line;
}

function newId(): string {
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

function emptyConversation(model = '', system = ''): IConversation {
  return {
    id: newId(),
    title: 'New chat',
    model,
    system,
    turns: [],
    updated: Date.now()
  };
}

/** A turn as stored: no images, no streaming flag (a reply cut by a reload is stopped). */
export function storedTurn(turn: ITurn): ITurn {
  const { images, streaming, ...rest } = turn;
  const out: ITurn = { ...rest };
  const left = (images?.length ?? 0) + (turn.imagesLeftOut ?? 0);
  if (left) {
    out.imagesLeftOut = left;
  }
  if (streaming) {
    out.stopped = true;
  }
  return out;
}

function isTurn(value: any): value is ITurn {
  return (
    value &&
    typeof value === 'object' &&
    typeof value.id === 'number' &&
    (value.role === 'user' || value.role === 'assistant') &&
    typeof value.content === 'string'
  );
}

/** Conversations read back from storage; anything malformed is left out. */
export function parseHistory(text: string | null): IConversation[] {
  if (!text) {
    return [];
  }
  let data: any;
  try {
    data = JSON.parse(text);
  } catch {
    return [];
  }
  const list = Array.isArray(data?.conversations) ? data.conversations : [];
  return list
    .filter(
      (c: any) =>
        c &&
        typeof c.id === 'string' &&
        Array.isArray(c.turns) &&
        c.turns.every(isTurn)
    )
    .map((c: any) => ({
      id: c.id,
      title: typeof c.title === 'string' ? c.title : titleOf(c.turns),
      model: typeof c.model === 'string' ? c.model : '',
      system: typeof c.system === 'string' ? c.system : '',
      turns: (c.turns as ITurn[]).map(storedTurn),
      updated: typeof c.updated === 'number' ? c.updated : 0
    }));
}

/**
 * The conversations of one notebook server: the current one, switching, starting and
 * deleting; every change is written back (coalesced: at most once per `delay` ms, and at
 * once by `flush()`). When the storage is full, the oldest conversations are dropped.
 */
export class ChatHistory {
  readonly store: Store<IHistoryState>;

  constructor(
    private readonly _storage: IStorageLike | null,
    private readonly _key: string,
    private readonly _delay = 500
  ) {
    const conversations = parseHistory(this._read())
      .filter(c => c.turns.length)
      .sort((a, b) => b.updated - a.updated)
      .slice(0, MAX_CONVERSATIONS);
    const current = conversations[0] ?? emptyConversation();
    if (!conversations.length) {
      conversations.push(current);
    }
    this.store = new Store<IHistoryState>({
      conversations,
      current: current.id
    });
    this._nextTurn =
      1 +
      conversations.reduce(
        (most, c) => Math.max(most, ...c.turns.map(t => t.id)),
        0
      );
  }

  get current(): IConversation {
    const { conversations, current } = this.store.state;
    return conversations.find(c => c.id === current) ?? conversations[0];
  }

  /** A new turn id (unique across the stored conversations). */
  nextTurnId(): number {
    return this._nextTurn++;
  }

  /** Start a new conversation (or stay on the current one when it is still empty). */
  startNew(model = '', system = ''): void {
    if (!this.current.turns.length) {
      this.update(this.current.id, { model, system });
      return;
    }
    const conversation = emptyConversation(model, system);
    this.store.set(s => ({
      conversations: [conversation, ...s.conversations].slice(
        0,
        MAX_CONVERSATIONS
      ),
      current: conversation.id
    }));
    this._schedule();
  }

  select(id: string): void {
    if (this.store.state.conversations.some(c => c.id === id)) {
      this.store.set({ current: id });
    }
  }

  /** Change a conversation: its turns (a list or an updater), model, system prompt. */
  update(
    id: string,
    patch: {
      turns?: ITurn[] | ((turns: ITurn[]) => ITurn[]);
      model?: string;
      system?: string;
    }
  ): void {
    this.store.set(s => ({
      ...s,
      conversations: s.conversations.map(c => {
        if (c.id !== id) {
          return c;
        }
        const turns =
          typeof patch.turns === 'function'
            ? patch.turns(c.turns)
            : (patch.turns ?? c.turns);
        return {
          ...c,
          turns,
          title: titleOf(turns),
          model: patch.model ?? c.model,
          system: patch.system ?? c.system,
          updated: patch.turns ? Date.now() : c.updated
        };
      })
    }));
    this._schedule();
  }

  /** Change one turn of a conversation. */
  updateTurn(
    id: string,
    turnId: number,
    patch: Partial<ITurn> | ((turn: ITurn) => Partial<ITurn>)
  ): void {
    this.update(id, {
      turns: turns =>
        turns.map(t =>
          t.id === turnId
            ? { ...t, ...(typeof patch === 'function' ? patch(t) : patch) }
            : t
        )
    });
  }

  /** Delete a conversation; the newest other one (or a new empty one) becomes current. */
  remove(id: string): void {
    this.store.set(s => {
      const rest = s.conversations.filter(c => c.id !== id);
      if (!rest.length) {
        rest.push(emptyConversation());
      }
      return {
        conversations: rest,
        current: s.current === id ? rest[0].id : s.current
      };
    });
    this._schedule();
  }

  /** Write now (pending writes included). */
  flush(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    this._write();
  }

  dispose(): void {
    this.flush();
  }

  private _schedule(): void {
    if (this._timer === null) {
      this._timer = setTimeout(() => {
        this._timer = null;
        this._write();
      }, this._delay);
    }
  }

  private _read(): string | null {
    try {
      return this._storage?.getItem(this._key) ?? null;
    } catch {
      return null; // storage disabled (private mode, policy)
    }
  }

  private _write(): void {
    if (!this._storage) {
      return;
    }
    let kept = this.store.state.conversations
      .filter(c => c.turns.length)
      .map(c => ({ ...c, turns: c.turns.map(storedTurn) }));
    for (;;) {
      try {
        if (kept.length) {
          this._storage.setItem(
            this._key,
            JSON.stringify({ version: VERSION, conversations: kept })
          );
        } else {
          this._storage.removeItem(this._key);
        }
        return;
      } catch {
        // Over the quota: drop the oldest conversation and try again.
        if (kept.length <= 1) {
          return;
        }
        kept = [...kept]
          .sort((a, b) => b.updated - a.updated)
          .slice(0, kept.length - 1);
      }
    }
  }

  private _nextTurn: number;
  private _timer: ReturnType<typeof setTimeout> | null = null;
}
