/**
 * A reply as Markdown, rendered by JupyterLab's own rendermime (the renderer of Markdown
 * cells: sanitized, code blocks highlighted as in the editor). Without a rendermime registry
 * the text is shown as it is.
 */
import type { IRenderMime, IRenderMimeRegistry } from '@jupyterlab/rendermime';
import * as React from 'react';

const MARKDOWN = 'text/markdown';

/** An untrusted Markdown model (a model's reply is never trusted: no scripts, sanitized HTML). */
function markdownModel(source: string): IRenderMime.IMimeModel {
  return {
    trusted: false,
    data: { [MARKDOWN]: source },
    metadata: {},
    setData: () => undefined
  };
}

export function Markdown({
  source,
  rendermime
}: {
  source: string;
  rendermime?: IRenderMimeRegistry | null;
}): JSX.Element {
  const host = React.useRef<HTMLDivElement>(null);
  const renderer = React.useRef<IRenderMime.IRenderer | null>(null);
  // One render at a time; while one runs, only the newest text waits (a streamed reply
  // changes many times per second).
  const queue = React.useRef<{ busy: boolean; next: string | null }>({
    busy: false,
    next: null
  });

  React.useEffect(() => {
    if (!rendermime || !host.current) {
      return;
    }
    // The renderer only fills its node: it is placed here by hand, not attached as a Lumino
    // widget, because React may remove the host before this effect's cleanup runs.
    const widget = rendermime.createRenderer(MARKDOWN);
    widget.addClass('jp-MLXChat-rendered');
    host.current.appendChild(widget.node);
    renderer.current = widget;
    return () => {
      renderer.current = null;
      widget.node.remove();
      widget.dispose();
    };
  }, [rendermime]);

  React.useEffect(() => {
    const widget = renderer.current;
    if (!widget) {
      return;
    }
    const q = queue.current;
    q.next = source;
    if (q.busy) {
      return;
    }
    q.busy = true;
    void (async () => {
      try {
        while (q.next !== null && !widget.isDisposed) {
          const text = q.next;
          q.next = null;
          await widget.renderModel(markdownModel(text));
        }
      } catch (err) {
        console.warn('jupyter-mlx-manager: could not render a reply', err);
      } finally {
        q.busy = false;
      }
    })();
  }, [source, rendermime]);

  if (!rendermime) {
    return <div className="jp-MLXChat-plain">{source}</div>;
  }
  return <div ref={host} className="jp-MLXChat-markdown" />;
}
