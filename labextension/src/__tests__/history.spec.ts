import {
  ChatHistory,
  historyKey,
  IStorageLike,
  ITurn,
  MAX_CONVERSATIONS,
  parseHistory,
  titleOf
} from '../history';

/** localStorage stand-in; `quota` makes writes longer than it fail, as a full storage does. */
class MemoryStorage implements IStorageLike {
  items = new Map<string, string>();
  quota = Infinity;
  getItem(key: string): string | null {
    return this.items.get(key) ?? null;
  }
  setItem(key: string, value: string): void {
    if (value.length > this.quota) {
      throw new Error('QuotaExceededError');
    }
    this.items.set(key, value);
  }
  removeItem(key: string): void {
    this.items.delete(key);
  }
}

const KEY = historyKey('http://h/user/ann/');

function turn(id: number, role: 'user' | 'assistant', content: string): ITurn {
  return { id, role, content };
}

describe('ChatHistory', () => {
  it('keeps conversations per server and restores them in a new page', () => {
    const storage = new MemoryStorage();
    const first = new ChatHistory(storage, KEY, 0);
    const id = first.current.id;
    first.update(id, {
      turns: [turn(first.nextTurnId(), 'user', 'Hello there')],
      model: 'local/tiny-demo',
      system: 'Be brief.'
    });
    first.updateTurn(id, 1, { content: 'Hello there!' });
    first.update(id, {
      turns: ts => [...ts, turn(first.nextTurnId(), 'assistant', '**Hi**')]
    });
    first.flush();

    const again = new ChatHistory(storage, KEY, 0);
    expect(again.current.turns.map(t => t.content)).toEqual([
      'Hello there!',
      '**Hi**'
    ]);
    expect(again.current.title).toBe('Hello there!');
    expect(again.current.model).toBe('local/tiny-demo');
    expect(again.current.system).toBe('Be brief.');
    // New turn ids do not collide with the restored ones.
    expect(again.nextTurnId()).toBe(3);
    // Another server (another base URL) has its own.
    expect(
      new ChatHistory(storage, historyKey('http://h/user/bob/'), 0).current
        .turns
    ).toEqual([]);
  });

  it('stores no images and marks a reply cut by a reload as stopped', () => {
    const storage = new MemoryStorage();
    const history = new ChatHistory(storage, KEY, 0);
    const id = history.current.id;
    history.update(id, {
      turns: [
        {
          ...turn(1, 'user', 'What is this?'),
          images: ['data:image/png;base64,AAAA', 'data:image/png;base64,BBBB']
        },
        { ...turn(2, 'assistant', 'A ca'), streaming: true }
      ]
    });
    history.flush();
    expect(storage.getItem(KEY)).not.toContain('base64');
    const [user, reply] = new ChatHistory(storage, KEY, 0).current.turns;
    expect(user.images).toBeUndefined();
    expect(user.imagesLeftOut).toBe(2);
    expect(reply.streaming).toBeUndefined();
    expect(reply.stopped).toBe(true);
  });

  it('starts, switches and deletes conversations', () => {
    const history = new ChatHistory(new MemoryStorage(), KEY, 0);
    const first = history.current.id;
    // An empty conversation is reused, not piled up.
    history.startNew('m');
    expect(history.store.state.conversations).toHaveLength(1);
    history.update(first, { turns: [turn(1, 'user', 'one')] });
    history.startNew('m', 'sys');
    const second = history.current.id;
    expect(second).not.toBe(first);
    expect(history.current.system).toBe('sys');
    history.select(first);
    expect(history.current.turns[0].content).toBe('one');
    history.remove(first);
    expect(history.current.id).toBe(second);
    history.remove(second);
    expect(history.store.state.conversations).toHaveLength(1);
    expect(history.current.turns).toEqual([]);
  });

  it('drops the oldest conversations when the storage is full', () => {
    const storage = new MemoryStorage();
    const history = new ChatHistory(storage, KEY, 0);
    for (let i = 0; i < 5; i++) {
      history.update(history.current.id, {
        turns: [
          turn(history.nextTurnId(), 'user', `question ${i} ${'x'.repeat(200)}`)
        ]
      });
      history.startNew();
    }
    storage.quota = 800; // room for about three
    history.flush();
    const kept = parseHistory(storage.getItem(KEY));
    expect(kept.length).toBeGreaterThan(0);
    expect(kept.length).toBeLessThan(5);
    expect(kept.map(c => c.title)).toContain(`question 4 ${'x'.repeat(48)}…`);
    expect(kept.map(c => c.title.slice(0, 10))).not.toContain('question 0');
  });

  it('keeps at most MAX_CONVERSATIONS and ignores broken storage', () => {
    const storage = new MemoryStorage();
    const history = new ChatHistory(storage, KEY, 0);
    for (let i = 0; i < MAX_CONVERSATIONS + 5; i++) {
      history.update(history.current.id, {
        turns: [turn(history.nextTurnId(), 'user', `q${i}`)]
      });
      history.startNew();
    }
    expect(history.store.state.conversations.length).toBeLessThanOrEqual(
      MAX_CONVERSATIONS
    );
    storage.setItem(KEY, '{not json');
    expect(new ChatHistory(storage, KEY, 0).current.turns).toEqual([]);
    storage.setItem(
      KEY,
      JSON.stringify({
        conversations: [{ id: 'x', turns: [{ role: 'robot' }] }]
      })
    );
    expect(parseHistory(storage.getItem(KEY))).toEqual([]);
  });

  it('works without a storage (disabled by the browser)', () => {
    const history = new ChatHistory(null, KEY, 0);
    history.update(history.current.id, { turns: [turn(1, 'user', 'hi')] });
    history.flush();
    expect(history.current.title).toBe('hi');
  });
});

describe('titleOf', () => {
  it('is the first line of the first question, shortened', () => {
    expect(titleOf([])).toBe('New chat');
    expect(titleOf([turn(1, 'user', '  Line one\nline two')])).toBe('Line one');
    expect(titleOf([turn(1, 'user', 'a'.repeat(100))])).toBe(
      `${'a'.repeat(59)}…`
    );
  });
});
