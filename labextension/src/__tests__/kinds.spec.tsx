jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => ({ baseUrl: 'http://h/base/', wsUrl: 'ws://h/base/' }),
    makeRequest: jest.fn()
  }
}));

import * as React from 'react';

import { searchModelsPath } from '../api';
import { KindBadge } from '../sections/common';
import { HubResult, LocalModel } from '../sections/ModelsSection';
import { LoadedModel } from '../sections/PoolSection';

// react-dom ships no types here (no @types/react-dom): its server renderer, typed by hand.
const { renderToStaticMarkup } = jest.requireActual<{
  renderToStaticMarkup: (element: React.ReactElement) => string;
}>('react-dom/server');

const noop = () => undefined;

/** The rendered badges' texts. */
const badges = (html: string) => {
  const found: string[] = [];
  const re = /class="jp-MLXPanel-badge[^"]*"[^>]*>([^<]*)</g;
  for (let m = re.exec(html); m; m = re.exec(html)) {
    found.push(m[1]);
  }
  return found;
};

describe('KindBadge', () => {
  it.each([
    ['vision', 'vision'],
    ['embedding', 'embedding'],
    ['transcription', 'transcription'],
    ['speech', 'speech']
  ])('shows %s', (kind, text) => {
    const html = renderToStaticMarkup(<KindBadge kind={kind} />);
    expect(html).toContain('jp-mod-kind');
    expect(badges(html)).toEqual([text]);
  });

  it.each([['text'], [null], [undefined], ['']])(
    'shows nothing for %s',
    kind => {
      expect(renderToStaticMarkup(<KindBadge kind={kind} />)).toBe('');
    }
  );
});

describe('LocalModel', () => {
  const render = (model: Parameters<typeof LocalModel>[0]['model']) =>
    renderToStaticMarkup(
      <LocalModel model={model} detailed={true} loading={false} onLoad={noop} />
    );

  it('shows a kind badge for non-text models only', () => {
    expect(badges(render({ id: 'local/vlm', kind: 'vision' }))).toEqual([
      'vision'
    ]);
    expect(badges(render({ id: 'local/tiny', kind: 'text' }))).toEqual([]);
    expect(badges(render({ id: 'local/old' }))).toEqual([]);
  });

  it('shows why a model cannot be served and disables Load', () => {
    const message =
      'embedding models need mlx_embeddings: pip install jupyter-mlx-manager[embeddings]';
    const html = render({
      id: 'local/bert',
      kind: 'embedding',
      unavailable: message
    });
    expect(html).toContain('role="note"');
    expect(html).toContain(message);
    expect(html).toMatch(
      /<button[^>]*disabled=""[^>]*aria-label="Load local\/bert"/
    );
    expect(badges(html)).toEqual(['embedding']);
  });

  it('leaves Load enabled for a servable model', () => {
    const html = render({ id: 'local/tiny', kind: 'text', unavailable: null });
    expect(html).not.toContain('role="note"');
    expect(html).toMatch(/<button[^>]*aria-label="Load local\/tiny"/);
    expect(html).not.toMatch(/disabled=""/);
  });
});

describe('HubResult', () => {
  it('shows the kind of a search result', () => {
    const html = renderToStaticMarkup(
      <HubResult
        model={{ id: 'org/whisper', kind: 'transcription', local: true }}
        downloading={false}
        busy={false}
        onDownload={noop}
      />
    );
    expect(badges(html)).toEqual(['transcription', 'on disk']);
  });
});

describe('LoadedModel', () => {
  it('shows the kind of a pool entry next to its status', () => {
    const html = renderToStaticMarkup(
      <LoadedModel
        model={{
          model: 'local/bert',
          kind: 'embedding',
          status: 'ready',
          pinned: false,
          keep_alive: 300,
          expires_at: null,
          memory_bytes: 1024
        }}
        budget={0}
        busy={null}
        onPin={noop}
        onKeepAlive={noop}
        onUnload={noop}
      />
    );
    expect(badges(html)).toEqual(['ready', 'embedding']);
  });
});

describe('searchModelsPath', () => {
  it('passes kind= and leaves it out for any kind', () => {
    expect(searchModelsPath({ q: 'qwen', kind: 'vision' })).toBe(
      'models/search?q=qwen&kind=vision'
    );
    expect(searchModelsPath({ q: 'qwen', kind: '' })).toBe(
      'models/search?q=qwen'
    );
  });
});
