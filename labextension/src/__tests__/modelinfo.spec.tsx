jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => ({ baseUrl: 'http://h/base/', wsUrl: 'ws://h/base/' }),
    makeRequest: jest.fn()
  }
}));

import * as React from 'react';

import { IPoolModel } from '../api';
import { plural } from '../format';
import { contextFigure, isDemoModel, kindActions } from '../modelinfo';
import { LocalModel } from '../sections/ModelsSection';
import { LoadedModel } from '../sections/PoolSection';

const { renderToStaticMarkup } = jest.requireActual<{
  renderToStaticMarkup: (element: React.ReactElement) => string;
}>('react-dom/server');

const noop = () => undefined;

describe('isDemoModel', () => {
  it("follows the server's flag, else the id", () => {
    expect(isDemoModel({ id: 'local/tiny-demo' })).toBe(true);
    expect(isDemoModel({ id: 'local/tiny-embedding' })).toBe(true);
    expect(
      isDemoModel({ id: 'mlx-community/Qwen2.5-0.5B-Instruct-4bit' })
    ).toBe(false);
    expect(isDemoModel({ id: 'local/destiny' })).toBe(false);
    expect(isDemoModel({ id: 'local/tiny-demo', demo: false })).toBe(false);
    expect(isDemoModel({ id: 'local/mine', demo: true })).toBe(true);
  });
});

describe('contextFigure', () => {
  it('is one figure: the catalog’s, else a positive runner figure; none for audio', () => {
    expect(contextFigure('text', 2048, 2048)).toBe(2048);
    expect(contextFigure('text', null, 4096)).toBe(4096);
    expect(contextFigure('embedding', 512)).toBe(512);
    expect(contextFigure('transcription', 64, 0)).toBeNull();
    expect(contextFigure('speech', 64)).toBeNull();
    expect(contextFigure(null, null, 0)).toBeNull();
  });
});

describe('actions by kind', () => {
  it('offers Chat only to chat models, in Models and in Pool', () => {
    expect(kindActions('text').chat).toBe(true);
    expect(kindActions('vision').chat).toBe(true);
    expect(kindActions(null).chat).toBe(true);
    expect(kindActions('text').notebook).toBe(false);
    for (const kind of ['embedding', 'transcription', 'speech'] as const) {
      expect(kindActions(kind).chat).toBe(false);
      const local = renderToStaticMarkup(
        <LocalModel
          model={{ id: `local/tiny-${kind}`, kind, loaded: true }}
          detailed
          loading={false}
          onLoad={noop}
          onChat={noop}
        />
      );
      expect(local).not.toContain('Chat with');
      // Without a way to insert cells (no notebooks), no "Use in notebook" either.
      expect(local).not.toContain('in a notebook');
      const usable = renderToStaticMarkup(
        <LocalModel
          model={{ id: `local/tiny-${kind}`, kind, loaded: true }}
          detailed
          loading={false}
          onLoad={noop}
          onUse={noop}
        />
      );
      expect(usable).toContain(`Use local/tiny-${kind} in a notebook`);
      const pooled: IPoolModel = {
        model: `local/tiny-${kind}`,
        kind,
        status: 'loaded',
        pinned: false,
        keep_alive: 300,
        expires_at: null,
        memory_bytes: 1,
        context_length: 0
      };
      const pool = renderToStaticMarkup(
        <LoadedModel
          model={pooled}
          budget={10}
          busy={null}
          onPin={noop}
          onKeepAlive={noop}
          onUnload={noop}
          onChat={noop}
        />
      );
      expect(pool).not.toContain('Chat with');
      expect(kindActions(kind).notebook).toBe(true);
      expect(pool).not.toContain('context');
    }
  });

  it('shows no keep-alive choice for a pinned model', () => {
    const model: IPoolModel = {
      model: 'local/tiny-demo',
      status: 'loaded',
      pinned: true,
      keep_alive: 300,
      expires_at: null,
      memory_bytes: 1
    };
    const render = (pinned: boolean) =>
      renderToStaticMarkup(
        <LoadedModel
          model={{ ...model, pinned }}
          budget={10}
          busy={null}
          onPin={noop}
          onKeepAlive={noop}
          onUnload={noop}
        />
      );
    expect(render(true)).not.toContain('Keep-alive of');
    expect(render(true)).toContain('never unloads (pinned)');
    expect(render(false)).toContain('Keep-alive of local/tiny-demo');
  });

  it('shows the estimate and fit before Load', () => {
    const html = renderToStaticMarkup(
      <LocalModel
        model={{ id: 'local/big', kind: 'text', size_bytes: 10 * 1024 ** 3 }}
        detailed
        loading={false}
        pool={{ models: [], limits: { max_memory_bytes: 4 * 1024 ** 3 } }}
        onLoad={noop}
      />
    );
    expect(html).toContain('data-fit="too-big"');
    expect(html).toContain('more than the whole budget (4.0\u00a0GiB)');
  });
});

describe('plural', () => {
  it('says 1 user, 2 users', () => {
    expect(plural(1, 'user')).toBe('1 user');
    expect(plural(0, 'user')).toBe('0 users');
    expect(plural(2, 'model')).toBe('2 models');
    expect(plural(3, 'child', 'children')).toBe('3 children');
  });
});
