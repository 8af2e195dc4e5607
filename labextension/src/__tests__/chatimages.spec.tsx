jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => ({ baseUrl: 'http://h/base/', wsUrl: 'ws://h/base/' }),
    makeRequest: jest.fn()
  }
}));
// chatpanel.tsx builds Lumino widgets at import time only as classes: stand-ins suffice here.
jest.mock('@jupyterlab/apputils', () => ({ MainAreaWidget: class {} }));
jest.mock('@jupyterlab/ui-components', () => ({
  ReactWidget: class {},
  LabIcon: class {}
}));

import * as React from 'react';

import { IPoolModel } from '../api';
import {
  buildMessages,
  chatModels,
  checkImages,
  isChatKind,
  MAX_IMAGE_BYTES,
  MAX_IMAGES,
  userContent
} from '../chat';
import { Composer, ModelPicker } from '../chatpanel';

const { renderToStaticMarkup } = jest.requireActual<{
  renderToStaticMarkup: (element: React.ReactElement) => string;
}>('react-dom/server');

const noop = () => undefined;
const PNG = 'data:image/png;base64,iVBORw0KGgo=';
const JPEG = 'data:image/jpeg;base64,/9j/4AAQ';

describe('userContent', () => {
  it('is the plain text without images', () => {
    expect(userContent('hello')).toBe('hello');
    expect(userContent('hello', [])).toBe('hello');
  });

  it('is a text part then one image_url part per image', () => {
    expect(userContent('what is this?', [PNG, JPEG])).toEqual([
      { type: 'text', text: 'what is this?' },
      { type: 'image_url', image_url: { url: PNG } },
      { type: 'image_url', image_url: { url: JPEG } }
    ]);
  });

  it('leaves out an empty text part', () => {
    expect(userContent('', [PNG])).toEqual([
      { type: 'image_url', image_url: { url: PNG } }
    ]);
  });
});

describe('buildMessages', () => {
  it('puts the system prompt first and the images in the user message', () => {
    expect(
      buildMessages(
        ' Be brief. ',
        [
          { role: 'user', content: 'hi' },
          { role: 'assistant', content: 'hello' },
          { role: 'user', content: 'describe', images: [PNG] }
        ],
        true
      )
    ).toEqual([
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'hi' },
      { role: 'assistant', content: 'hello' },
      {
        role: 'user',
        content: [
          { type: 'text', text: 'describe' },
          { type: 'image_url', image_url: { url: PNG } }
        ]
      }
    ]);
  });

  it('sends no images to a model that is not a vision model', () => {
    expect(
      buildMessages('', [{ role: 'user', content: 'x', images: [PNG] }], false)
    ).toEqual([{ role: 'user', content: 'x' }]);
  });

  it('keeps the newest images within the per-request limit', () => {
    const old = Array.from({ length: 6 }, (_, i) => `${PNG}old${i}`);
    const recent = Array.from({ length: 4 }, (_, i) => `${PNG}new${i}`);
    const messages = buildMessages(
      '',
      [
        { role: 'user', content: 'first', images: old },
        { role: 'assistant', content: 'ok' },
        { role: 'user', content: 'second', images: recent }
      ],
      true
    );
    const urls: string[] = [];
    for (const m of messages) {
      for (const p of typeof m.content === 'string' ? [] : m.content) {
        if (p.type === 'image_url') {
          urls.push(p.image_url.url);
        }
      }
    }
    expect(urls).toHaveLength(MAX_IMAGES);
    expect(urls.slice(-4)).toEqual(recent);
    expect(urls.slice(0, 4)).toEqual(old.slice(2));
  });

  it('skips empty turns', () => {
    expect(
      buildMessages(
        '',
        [
          { role: 'assistant', content: '' },
          { role: 'user', content: 'x' }
        ],
        true
      )
    ).toEqual([{ role: 'user', content: 'x' }]);
  });
});

describe('checkImages', () => {
  const file = (name: string, type = 'image/png', size = 1000) => ({
    name,
    type,
    size
  });

  it('accepts PNG, JPEG, GIF and WebP', () => {
    const files = [
      file('a.png'),
      file('b.jpg', 'image/jpeg'),
      file('c.gif', 'image/gif'),
      file('d.webp', 'image/webp')
    ];
    expect(checkImages(0, files)).toEqual({ accepted: files, refused: [] });
  });

  it('refuses a file over 20 MiB and one of another type', () => {
    const big = file('big.png', 'image/png', MAX_IMAGE_BYTES + 1);
    const edge = file('edge.png', 'image/png', MAX_IMAGE_BYTES);
    const svg = file('x.svg', 'image/svg+xml');
    const { accepted, refused } = checkImages(0, [big, edge, svg]);
    expect(accepted).toEqual([edge]);
    expect(refused).toHaveLength(2);
    expect(refused[0]).toMatch(/big\.png is over 20\.0\u00a0MiB/);
    expect(refused[1]).toMatch(/x\.svg is not a PNG, JPEG, GIF or WebP/);
  });

  it('refuses more than 8 images, counting the pending ones', () => {
    const files = Array.from({ length: 5 }, (_, i) => file(`${i}.png`));
    const { accepted, refused } = checkImages(5, files);
    expect(accepted).toEqual(files.slice(0, 3));
    expect(refused).toEqual(['At most 8 images per message: 2 not added.']);
    expect(checkImages(MAX_IMAGES, [file('9.png')]).accepted).toEqual([]);
  });

  it('names a pasted image that has no name', () => {
    expect(checkImages(0, [file('', 'text/plain')]).refused[0]).toMatch(
      /^pasted image /
    );
  });
});

describe('chat models', () => {
  const pool: IPoolModel[] = [
    'text',
    'vision',
    'embedding',
    'transcription',
    'speech',
    null
  ].map(kind => ({
    model: `local/${kind ?? 'remote'}`,
    kind: kind as IPoolModel['kind'],
    status: 'ready',
    pinned: false,
    keep_alive: 300,
    expires_at: null,
    memory_bytes: 0
  }));

  it('are the text and vision models (and those of no known kind)', () => {
    expect(chatModels(pool).map(m => m.model)).toEqual([
      'local/text',
      'local/vision',
      'local/remote'
    ]);
    expect(isChatKind(undefined)).toBe(true);
    expect(isChatKind('embedding')).toBe(false);
  });

  it('are the only ones the picker offers', () => {
    const html = renderToStaticMarkup(
      <ModelPicker
        models={chatModels(pool)}
        value="local/vision"
        onChange={noop}
      />
    );
    const options: string[] = [];
    const re = /<option value="([^"]*)"/g;
    for (let m = re.exec(html); m; m = re.exec(html)) {
      options.push(m[1]);
    }
    expect(options).toEqual(['local/text', 'local/vision', 'local/remote']);
    expect(html).toContain('local/vision (vision)');
    expect(html).not.toContain('local/embedding');
  });

  it('says when no chat model is loaded', () => {
    const html = renderToStaticMarkup(
      <ModelPicker
        models={chatModels(pool.slice(2, 5))}
        value=""
        onChange={noop}
      />
    );
    expect(html).toContain('no chat model loaded');
    expect(html).toMatch(/<select[^>]*disabled=""/);
  });
});

describe('Composer', () => {
  const render = (props: Partial<React.ComponentProps<typeof Composer>> = {}) =>
    renderToStaticMarkup(
      <Composer
        model="local/vlm"
        vision={true}
        input=""
        images={[]}
        notice={null}
        streaming={false}
        onInput={noop}
        onFiles={noop}
        onRemoveImage={noop}
        onDismissNotice={noop}
        onSend={noop}
        onStop={noop}
        {...props}
      />
    );

  it('offers an image file input and an attach button for a vision model', () => {
    const html = render();
    expect(html).toMatch(
      /<input[^>]*type="file"[^>]*accept="image\/png,image\/jpeg,image\/gif,image\/webp"/
    );
    expect(html).toContain('aria-label="Attach images"');
  });

  it('hides the attach control for a text model', () => {
    const html = render({ model: 'local/tiny', vision: false });
    expect(html).not.toContain('type="file"');
    expect(html).not.toContain('Attach images');
    expect(html).toContain('aria-label="Message"');
  });

  it('shows the pending images with a remove button each', () => {
    const html = render({
      images: [
        { name: 'plot.png', type: 'image/png', size: 10, url: PNG },
        { name: 'cat.jpg', type: 'image/jpeg', size: 10, url: JPEG }
      ]
    });
    expect(html).toContain(`src="${PNG}"`);
    expect(html).toContain(`src="${JPEG}"`);
    expect(html).toContain('aria-label="Remove plot.png"');
    expect(html).toContain('aria-label="Remove cat.jpg"');
    // Images alone may be sent.
    expect(html).not.toMatch(
      /<button[^>]*disabled=""[^>]*aria-label="Send message"/
    );
  });

  it('disables attaching at the limit', () => {
    const images = Array.from({ length: MAX_IMAGES }, (_, i) => ({
      name: `${i}.png`,
      type: 'image/png',
      size: 1,
      url: PNG
    }));
    expect(render({ images })).toMatch(
      /<button[^>]*disabled=""[^>]*aria-label="Attach images"/
    );
  });

  it('shows a refusal as an alert', () => {
    const html = render({ notice: 'big.png is over 20.0 MiB.' });
    expect(html).toMatch(/role="alert"/);
    expect(html).toContain('big.png is over 20.0 MiB.');
  });

  it('will not send images to a model that is not a vision model', () => {
    const html = render({
      vision: false,
      model: 'local/tiny',
      input: 'hi',
      images: [{ name: 'a.png', type: 'image/png', size: 1, url: PNG }]
    });
    expect(html).toContain('local/tiny does not take images');
    expect(html).toMatch(
      /<button[^>]*disabled=""[^>]*aria-label="Send message"/
    );
  });
});
