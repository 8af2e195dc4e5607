const mockMakeRequest = jest.fn();
const mockSettings = { baseUrl: 'http://lab.example/user/ann/', wsUrl: '' };

jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => mockSettings,
    makeRequest: (...args: unknown[]) => mockMakeRequest(...args)
  }
}));

import {
  buildCompletionRequest,
  gatherContext,
  IEditorContext,
  MAX_PREFIX_CHARS,
  MLXInlineProvider,
  PROVIDER_ID,
  readStream,
  Suggestion
} from '../inline';

const encoder = new TextEncoder();

/** A streamed reply whose chunks the test releases one by one. */
function controlledStream(signal?: AbortSignal | null) {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    }
  });
  signal?.addEventListener('abort', () => {
    try {
      controller.error(new DOMException('aborted', 'AbortError'));
    } catch {
      // already closed
    }
  });
  return {
    response: new Response(body, { status: 200 }),
    send: (data: string) =>
      controller.enqueue(encoder.encode(`data: ${data}\n\n`)),
    close: () => controller.close()
  };
}

const chunk = (text: string) =>
  JSON.stringify({ object: 'text_completion', choices: [{ index: 0, text }] });

function cell(type: string, source: string, id = 'cell-' + source.length) {
  return { model: { type, id, sharedModel: { getSource: () => source } } };
}

function notebookWidget(cells: any[], active: number, kernelId = 'k-1') {
  return {
    content: { widgets: cells, activeCellIndex: active },
    sessionContext: { session: { kernel: { id: kernelId } } }
  };
}

const flush = () => new Promise(resolve => setTimeout(resolve, 0));

beforeEach(() => mockMakeRequest.mockReset());

describe('gatherContext', () => {
  it('takes the code cells above, then the cell up to the cursor', () => {
    const cells = [
      cell('code', 'import math'),
      cell('markdown', '# Notes'),
      cell('code', '   '),
      cell('code', 'x = 1'),
      cell('code', 'def fib(n):\n    ', 'abc-123')
    ];
    const ctx = gatherContext(
      { text: 'def fib(n):\n    return', offset: 16 },
      notebookWidget(cells, 4, 'f1e2d3c4-0000-4000-8000-000000000000')
    );
    expect(ctx.prefix).toBe('import math\n\nx = 1\n\ndef fib(n):\n    ');
    expect(ctx.suffix).toBe('return');
    expect(ctx.cellId).toBe('abc-123');
    expect(ctx.kernelId).toBe('f1e2d3c4-0000-4000-8000-000000000000');
  });

  it('works in a plain editor and bounds the context', () => {
    const long = 'a = 1\n'.repeat(2000);
    const ctx = gatherContext({ text: long, offset: long.length }, {});
    expect(ctx.prefix.length).toBeLessThanOrEqual(MAX_PREFIX_CHARS);
    expect(ctx.prefix.startsWith('a = 1')).toBe(true);
    expect(ctx.kernelId).toBeNull();
    expect(ctx.cellId).toBeNull();
  });

  it('drops ids the server would not accept', () => {
    const ctx = gatherContext(
      { text: 'x', offset: 1 },
      notebookWidget([cell('code', 'x', 'bad id!')], 0, '../etc')
    );
    expect(ctx.kernelId).toBeNull();
    expect(ctx.cellId).toBeNull();
  });
});

describe('buildCompletionRequest', () => {
  const ctx: IEditorContext = {
    prefix: 'def fib(',
    suffix: '',
    kernelId: 'k-1',
    cellId: 'c-1'
  };

  it('streams a prefix completion with the kernel and cell headers', () => {
    const { body, headers } = buildCompletionRequest(ctx, {
      model: 'local/coder',
      maxTokens: 32
    });
    expect(body).toEqual({
      model: 'local/coder',
      prompt: 'def fib(',
      max_tokens: 32,
      stream: true,
      temperature: 0,
      stop: ['\n\n\n']
    });
    expect(headers['X-MLX-Kernel-Id']).toBe('k-1');
    expect(headers['X-MLX-Cell-Id']).toBe('c-1');
    expect(headers['Content-Type']).toBe('application/json');
  });

  it('fills in the middle when the model has FIM tokens', () => {
    const fim = { prefix: '<PRE>', suffix: '<SUF>', middle: '<MID>' };
    const { body } = buildCompletionRequest(
      { ...ctx, suffix: ')\nprint(fib(3))' },
      { model: 'm', maxTokens: 5000 },
      fim
    );
    expect(body.prompt).toBe('<PRE>def fib(<SUF>)\nprint(fib(3))<MID>');
    expect(body.stop).toEqual(['\n']); // the rest of the line is there: finish the line only
    expect(body.max_tokens).toBe(1024);
  });

  it('without FIM tokens or a kernel: prefix only, no attribution', () => {
    const { body, headers } = buildCompletionRequest(
      { ...ctx, suffix: 'rest', kernelId: null },
      { model: 'm', maxTokens: 0 }
    );
    expect(body.prompt).toBe('def fib(');
    expect(body.max_tokens).toBe(64);
    expect(headers['X-MLX-Kernel-Id']).toBeUndefined();
    expect(headers['X-MLX-Cell-Id']).toBeUndefined();
  });
});

describe('readStream', () => {
  it('collects the text and stops at [DONE]; reports in-band errors', async () => {
    const ok = new Suggestion();
    await readStream(
      new Response(
        `data: ${chunk('n')}\n\n: keepalive\n\ndata: ${chunk(' < 2')}\n\ndata: [DONE]\n\n`
      ),
      ok
    );
    expect(ok.text).toBe('n < 2');
    expect(ok.done).toBe(true);
    expect(ok.error).toBeNull();

    const bad = new Suggestion();
    await readStream(
      new Response(
        `data: ${chunk('a')}\n\ndata: {"error": {"message": "runner crashed"}}\n\n`
      ),
      bad
    );
    expect(bad.error).toBe('runner crashed');
  });
});

describe('MLXInlineProvider', () => {
  const request = { text: 'def fib(', offset: 8 };
  const context: any = {
    widget: notebookWidget([cell('code', 'def fib(', 'cell-9')], 0),
    triggerKind: 1,
    session: null
  };

  it('is off until a model is chosen', async () => {
    const fetch = jest.fn();
    const provider = new MLXInlineProvider(mockSettings as any, fetch);
    expect(provider.identifier).toBe(PROVIDER_ID);
    expect(provider.name).toBe('MLX');
    expect(await provider.fetch(request, context)).toEqual({ items: [] });
    expect(fetch).not.toHaveBeenCalled();
  });

  it('streams ghost text from mlx/v1/completions', async () => {
    mockMakeRequest.mockResolvedValue(
      new Response(JSON.stringify({ id: 'local/coder' }), { status: 200 })
    );
    const streams: ReturnType<typeof controlledStream>[] = [];
    const fetch = jest.fn(async (_url: string, init: RequestInit) => {
      const s = controlledStream(init.signal);
      streams.push(s);
      return s.response;
    });
    const provider = new MLXInlineProvider(mockSettings as any, fetch);
    provider.settings = { model: 'local/coder', maxTokens: 16 };

    const list = await provider.fetch(request, context);
    expect(list.items).toHaveLength(1);
    const [item] = list.items;
    expect(item.isIncomplete).toBe(true);
    await flush();
    expect(fetch).toHaveBeenCalledTimes(1);
    const [url, init] = fetch.mock.calls[0];
    expect(url).toBe('http://lab.example/user/ann/mlx/v1/completions');
    expect(JSON.parse(init.body as string)).toMatchObject({
      model: 'local/coder',
      prompt: 'def fib(',
      max_tokens: 16,
      stream: true
    });
    expect((init.headers as any)['X-MLX-Kernel-Id']).toBe('k-1');
    expect((init.headers as any)['X-MLX-Cell-Id']).toBe('cell-9');

    const seen: string[] = [];
    const consumer = (async () => {
      for await (const { response } of provider.stream(item.token!)) {
        seen.push(response.insertText);
      }
    })();
    streams[0].send(chunk('n'));
    await flush();
    streams[0].send(chunk('):'));
    await flush();
    streams[0].send('[DONE]');
    await consumer;
    expect(seen[seen.length - 1]).toBe('n):');
    expect(seen.every(text => 'n):'.startsWith(text) && text)).toBe(true);
  });

  it('a new request (typing on) aborts the pending one', async () => {
    mockMakeRequest.mockRejectedValue(new Error('no info'));
    const signals: AbortSignal[] = [];
    const streams: ReturnType<typeof controlledStream>[] = [];
    const fetch = jest.fn(async (_url: string, init: RequestInit) => {
      signals.push(init.signal!);
      const s = controlledStream(init.signal);
      streams.push(s);
      return s.response;
    });
    const provider = new MLXInlineProvider(mockSettings as any, fetch);
    provider.settings = { model: 'local/coder', maxTokens: 16 };

    const first = (await provider.fetch(request, context)).items[0];
    await flush();
    const seen: string[] = [];
    const consumer = (async () => {
      for await (const { response } of provider.stream(first.token!)) {
        seen.push(response.insertText);
      }
    })();
    streams[0].send(chunk('n'));
    await flush();

    const second = (
      await provider.fetch({ text: 'def fib(n', offset: 9 }, context)
    ).items[0];
    await consumer; // the stale stream ends
    expect(signals[0].aborted).toBe(true);
    expect(second.token).not.toBe(first.token);
    await flush();
    expect(signals[1].aborted).toBe(false);
    // a stale token streams nothing
    const stale: string[] = [];
    for await (const { response } of provider.stream(first.token!)) {
      stale.push(response.insertText);
    }
    expect(stale).toEqual([]);

    // Choosing another model (or none) cancels too.
    provider.settings = { model: '', maxTokens: 16 };
    expect(signals[1].aborted).toBe(true);
  });

  it('uses the FIM tokens the server describes', async () => {
    mockMakeRequest.mockResolvedValue(
      new Response(
        JSON.stringify({
          id: 'local/coder',
          fim: {
            prefix: '<|fim_prefix|>',
            suffix: '<|fim_suffix|>',
            middle: '<|fim_middle|>'
          }
        }),
        { status: 200 }
      )
    );
    const fetch = jest.fn(async () => new Response('data: [DONE]\n\n'));
    const provider = new MLXInlineProvider(mockSettings as any, fetch);
    provider.settings = { model: 'local/coder', maxTokens: 8 };
    await provider.fetch({ text: 'x = (\n)', offset: 5 }, { ...context });
    await flush();
    const body = JSON.parse((fetch.mock.calls[0] as any)[1].body);
    expect(body.prompt).toBe(
      '<|fim_prefix|>x = (<|fim_suffix|>\n)<|fim_middle|>'
    );
    expect(String(mockMakeRequest.mock.calls[0][0])).toContain(
      'mlx/api/models/local/local/coder'
    );
  });
});
