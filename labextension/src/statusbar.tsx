/**
 * Status-bar item: how many models are loaded and the memory they use; a click (or Enter)
 * opens the sidebar panel on its Pool section.
 */
import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { useStore } from './hooks';
import { mlxIcon } from './icon';
import { MLXService } from './service';
import { statusBarText } from './summary';

function StatusItem({
  service,
  onOpen
}: {
  service: MLXService;
  onOpen: () => void;
}): JSX.Element {
  const state = useStore(service.store);
  const { text, title } = statusBarText(state);
  return (
    <button
      type="button"
      className={`jp-MLXStatus ${state.error ? 'jp-mod-error' : ''}`}
      title={title}
      aria-label={title}
      onClick={onOpen}
    >
      <mlxIcon.react
        tag="span"
        className="jp-MLXStatus-icon"
        elementSize="normal"
      />
      <span className="jp-MLXStatus-text">{text}</span>
    </button>
  );
}

export class MLXStatusItem extends ReactWidget {
  constructor(
    private readonly _service: MLXService,
    private readonly _onOpen: () => void
  ) {
    super();
    this.addClass('jp-MLXStatus-widget');
  }

  protected render(): JSX.Element {
    return <StatusItem service={this._service} onOpen={this._onOpen} />;
  }
}
