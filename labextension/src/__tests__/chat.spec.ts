const mockMakeRequest = jest.fn();
const settings = {
  baseUrl: 'http://h:8888/base/',
  wsUrl: 'ws://h:8888/base/'
} as any;

jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => settings,
    makeRequest: (...args: unknown[]) => mockMakeRequest(...args)
  }
}));

import { ApiError } from '../api';
import {
  computeStats,
  IToolCall,
  mergeToolCalls,
  parseChunk,
  streamChat
} from '../chat';

function chunk(content: string | null, finish: string | null = null): string {
  const delta = content === null ? {} : { content };
  return `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
}

/** A streaming Response whose body yields the given pieces (split anywhere). */
function streamReply(pieces: string[], status = 200): Response {
  const encoder = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      for (const piece of pieces) {
        controller.enqueue(encoder.encode(piece));
      }
      controller.close();
    }
  });
  return new Response(body, {
    status,
    headers: { 'Content-Type': 'text/event-stream' }
  });
}

describe('parseChunk', () => {
  it('reads text deltas, the usage chunk, [DONE] and in-band errors', () => {
    expect(
      parseChunk(
        '{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}'
      )
    ).toEqual({
      kind: 'delta',
      text: 'Hi',
      finishReason: null
    });
    expect(
      parseChunk('{"choices":[{"delta":{},"finish_reason":"length"}]}')
    ).toEqual({
      kind: 'delta',
      text: '',
      finishReason: 'length'
    });
    expect(
      parseChunk('{"choices":[],"usage":{"completion_tokens":3}}')
    ).toEqual({
      kind: 'usage',
      usage: { completion_tokens: 3 }
    });
    expect(parseChunk(' [DONE]')).toEqual({ kind: 'done' });
    expect(
      parseChunk(
        '{"error":{"message":"runner crashed","type":"server_error","code":"crash"}}'
      )
    ).toEqual({
      kind: 'error',
      message: 'runner crashed',
      code: 'crash'
    });
    expect(parseChunk('not json')).toEqual({ kind: 'ignore' });
  });
});

describe('computeStats', () => {
  it('measures time to first token and decode speed', () => {
    expect(
      computeStats({
        startedAt: 1000,
        firstTokenAt: 1020,
        endedAt: 1520,
        completionTokens: 51
      })
    ).toEqual({
      ttftMs: 20,
      tokensPerSecond: 100,
      completionTokens: 51,
      totalMs: 520
    });
  });

  it('has no speed without a first token or with a single token', () => {
    expect(
      computeStats({
        startedAt: 0,
        firstTokenAt: null,
        endedAt: 10,
        completionTokens: null
      })
    ).toMatchObject({
      ttftMs: null,
      tokensPerSecond: null
    });
    expect(
      computeStats({
        startedAt: 0,
        firstTokenAt: 5,
        endedAt: 10,
        completionTokens: 1
      }).tokensPerSecond
    ).toBeNull();
  });
});

describe('streamChat', () => {
  beforeEach(() => mockMakeRequest.mockReset());

  it('posts a streaming request and assembles the reply from split chunks', async () => {
    const text =
      ': keepalive\n\n' +
      chunk('') +
      chunk('Hel') +
      chunk('lo') +
      chunk(null, 'stop') +
      'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}\n\n' +
      'data: [DONE]\n\n';
    // split into 7-byte pieces to cross event boundaries
    const pieces = text.match(/[\s\S]{1,7}/g) as string[];
    mockMakeRequest.mockResolvedValue(streamReply(pieces));
    let clock = 0;
    const deltas: string[] = [];
    const result = await streamChat(
      {
        model: 'local/tiny-demo',
        messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 8
      },
      { onDelta: d => deltas.push(d), now: () => (clock += 10) },
      settings
    );
    const [url, init] = mockMakeRequest.mock.calls[0];
    expect(url).toBe('http://h:8888/base/mlx/v1/chat/completions');
    expect(init.method).toBe('POST');
    expect(JSON.parse(init.body)).toEqual({
      model: 'local/tiny-demo',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 8,
      stream: true,
      stream_options: { include_usage: true }
    });
    expect(deltas).toEqual(['Hel', 'lo']);
    expect(result.text).toBe('Hello');
    expect(result.finishReason).toBe('stop');
    expect(result.usage).toEqual({ prompt_tokens: 4, completion_tokens: 2 });
    expect(result.stopped).toBe(false);
    expect(result.stats.ttftMs).toBe(10);
    expect(result.stats.completionTokens).toBe(2);
    expect(result.stats.tokensPerSecond).toBeGreaterThan(0);
  });

  it('raises the OpenAI error of a failed request', async () => {
    mockMakeRequest.mockResolvedValue(
      new Response(
        JSON.stringify({
          error: {
            message: 'model not found',
            type: 'invalid_request_error',
            code: 'model_not_found'
          }
        }),
        {
          status: 404
        }
      )
    );
    await expect(
      streamChat({ model: 'x/y', messages: [] }, {}, settings)
    ).rejects.toMatchObject({
      status: 404,
      message: 'model not found',
      reason: 'model_not_found'
    });
  });

  it('raises an in-band error sent after the headers', async () => {
    mockMakeRequest.mockResolvedValue(
      streamReply([
        chunk('a'),
        'data: {"error":{"message":"runner crashed","type":"server_error"}}\n\n'
      ])
    );
    const err = await streamChat(
      { model: 'x/y', messages: [] },
      {},
      settings
    ).catch(e => e);
    expect(err).toBeInstanceOf(ApiError);
    expect(err.message).toBe('runner crashed');
  });

  it('stops when aborted and keeps the text so far', async () => {
    const abort = new AbortController();
    const encoder = new TextEncoder();
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(encoder.encode(chunk('partial')));
        abort.signal.addEventListener('abort', () =>
          controller.error(new DOMException('aborted', 'AbortError'))
        );
      }
    });
    mockMakeRequest.mockResolvedValue(new Response(body, { status: 200 }));
    const result = await streamChat(
      { model: 'x/y', messages: [] },
      { signal: abort.signal, onDelta: () => abort.abort() },
      settings
    );
    expect(result.stopped).toBe(true);
    expect(result.text).toBe('partial');
  });

  it('treats an abort before the reply as stopped, not as an unreachable server', async () => {
    const abort = new AbortController();
    abort.abort();
    mockMakeRequest.mockRejectedValue(
      new DOMException('aborted', 'AbortError')
    );
    const result = await streamChat(
      { model: 'x/y', messages: [] },
      { signal: abort.signal },
      settings
    );
    expect(result).toMatchObject({ stopped: true, text: '' });
  });
});

describe('reasoning and tool calls', () => {
  beforeEach(() => mockMakeRequest.mockReset());

  it('reads reasoning_content and tool-call pieces from a chunk', () => {
    expect(
      parseChunk('{"choices":[{"delta":{"reasoning_content":"Hmm."}}]}')
    ).toEqual({
      kind: 'delta',
      text: '',
      finishReason: null,
      reasoning: 'Hmm.'
    });
    const call = parseChunk(
      JSON.stringify({
        choices: [
          {
            delta: {
              tool_calls: [
                {
                  index: 0,
                  id: 'call_1',
                  type: 'function',
                  function: { name: 'get_weather', arguments: '{"city":' }
                }
              ]
            }
          }
        ]
      })
    );
    expect(call).toMatchObject({
      toolCalls: [
        { index: 0, id: 'call_1', name: 'get_weather', arguments: '{"city":' }
      ]
    });
  });

  it('assembles tool calls whose arguments arrive in pieces', () => {
    expect(
      mergeToolCalls(
        mergeToolCalls(
          [],
          [{ index: 0, id: 'c1', name: 'get_weather', arguments: '{"ci' }]
        ),
        [
          { index: 0, arguments: 'ty": "Paris"}' },
          { index: 1, id: 'c2', name: 'now', arguments: '{}' }
        ]
      )
    ).toEqual([
      { id: 'c1', name: 'get_weather', arguments: '{"city": "Paris"}' },
      { id: 'c2', name: 'now', arguments: '{}' }
    ]);
  });

  it('streams reasoning apart from the answer, and the tool calls', async () => {
    const delta = (d: object) =>
      `data: ${JSON.stringify({ choices: [{ index: 0, delta: d, finish_reason: null }] })}\n\n`;
    const text =
      delta({ reasoning_content: 'The user ' }) +
      delta({ reasoning_content: 'greets me.' }) +
      delta({ content: 'Hello!' }) +
      delta({
        tool_calls: [
          {
            index: 0,
            id: 'c1',
            type: 'function',
            function: { name: 'get_weather', arguments: '{"city": "Paris"}' }
          }
        ]
      }) +
      'data: [DONE]\n\n';
    mockMakeRequest.mockResolvedValue(streamReply([text]));
    const thoughts: string[] = [];
    const calls: IToolCall[][] = [];
    const result = await streamChat(
      { model: 'm', messages: [{ role: 'user', content: 'hi' }] },
      {
        onReasoning: r => thoughts.push(r),
        onToolCalls: c => calls.push(c)
      },
      settings
    );
    expect(thoughts).toEqual(['The user ', 'greets me.']);
    expect(result.reasoning).toBe('The user greets me.');
    expect(result.text).toBe('Hello!');
    expect(result.toolCalls).toEqual([
      { id: 'c1', name: 'get_weather', arguments: '{"city": "Paris"}' }
    ]);
    expect(calls).toHaveLength(1);
    // The first reasoning token is the first token (TTFT).
    expect(result.stats.ttftMs).not.toBeNull();
  });
});
