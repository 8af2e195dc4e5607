import { ServerConnection } from '@jupyterlab/services';
import { ReactWidget, refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import * as React from 'react';

import { ApiError, getStatus, IStatus } from './api';
import { formatBytes } from './format';
import { mlxIcon } from './icon';

export const PANEL_ID = 'jupyter-mlx-manager:panel';

interface IViewProps {
  /** Seconds between refreshes; 0 or less: only on demand. */
  interval: number;
  /** Poll only while the panel is visible. */
  active: boolean;
  settings?: ServerConnection.ISettings;
}

interface IViewState {
  status: IStatus | null;
  error: ApiError | null;
  loading: boolean;
  updated: Date | null;
}

function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) {
    return err;
  }
  return new ApiError(err instanceof Error ? err.message : String(err), -1);
}

function ErrorNotice({ error }: { error: ApiError }): JSX.Element {
  let title = 'Error';
  if (error.isForbidden) {
    title = 'Pending approval';
  } else if (error.status === 401) {
    title = 'Not signed in';
  } else if (error.isNetworkError) {
    title = 'Server unreachable';
  }
  return (
    <div
      className={`jp-MLXPanel-notice ${
        error.isForbidden ? 'jp-mod-warning' : 'jp-mod-error'
      }`}
      role="alert"
    >
      <strong>{title}</strong>
      <div className="jp-MLXPanel-noticeMessage">{error.message}</div>
    </div>
  );
}

function Row({ name, value }: { name: string; value: React.ReactNode }): JSX.Element {
  const key = name.toLowerCase();
  return (
    <>
      <dt>{name}</dt>
      <dd className={`jp-MLXPanel-${key}`} data-field={key}>
        {value}
      </dd>
    </>
  );
}

function StatusList({ status }: { status: IStatus }): JSX.Element {
  const { device, memory, pool, user } = status;
  let deviceText = '—';
  if (device) {
    const { type, name } = device;
    deviceText = name && type && name !== type ? `${name} (${type})` : name || type || '—';
  }
  const memoryText = memory
    ? `${formatBytes(memory.available_bytes)} free of ${formatBytes(memory.total_bytes)}`
    : '—';
  let poolText = '—';
  if (pool) {
    const loaded = pool.loaded_models ?? pool.models?.length ?? 0;
    const max = pool.max_loaded_models ?? pool.limits?.max_loaded_models;
    poolText = `${loaded}${typeof max === 'number' ? ` / ${max}` : ''} models loaded`;
    if (typeof pool.memory_used_bytes === 'number') {
      poolText += `, ${formatBytes(pool.memory_used_bytes)} used`;
    }
  }
  return (
    <dl className="jp-MLXPanel-status">
      <Row name="Version" value={status.version ?? '—'} />
      <Row name="Device" value={deviceText} />
      <Row name="Memory" value={memoryText} />
      {memory?.budget_bytes !== undefined && (
        <Row name="Budget" value={formatBytes(memory.budget_bytes)} />
      )}
      <Row name="Pool" value={poolText} />
      {user?.username && (
        <Row
          name="User"
          value={`${user.username}${user.is_admin ? ' (admin)' : ''}${
            user.status && user.status !== 'approved' ? ` — ${user.status}` : ''
          }`}
        />
      )}
    </dl>
  );
}

function StatusView({ interval, active, settings }: IViewProps): JSX.Element {
  const [state, setState] = React.useState<IViewState>({
    status: null,
    error: null,
    loading: true,
    updated: null
  });
  const inFlight = React.useRef(false);

  const refresh = React.useCallback(async () => {
    if (inFlight.current) {
      return;
    }
    inFlight.current = true;
    setState(s => ({ ...s, loading: true }));
    try {
      const status = await getStatus(settings);
      setState({ status, error: null, loading: false, updated: new Date() });
    } catch (err) {
      setState(s => ({ ...s, error: toApiError(err), loading: false }));
    } finally {
      inFlight.current = false;
    }
  }, [settings]);

  React.useEffect(() => {
    if (!active) {
      return;
    }
    void refresh();
    if (!(interval > 0)) {
      return;
    }
    const timer = window.setInterval(() => void refresh(), interval * 1000);
    return () => window.clearInterval(timer);
  }, [active, interval, refresh]);

  const { status, error, loading, updated } = state;
  return (
    <div className="jp-MLXPanel-body" aria-busy={loading}>
      <header className="jp-MLXPanel-header">
        <h2 className="jp-MLXPanel-title">MLX Manager</h2>
        <button
          type="button"
          className="jp-MLXPanel-refresh jp-Button jp-mod-minimal"
          title="Refresh status"
          aria-label="Refresh status"
          onClick={() => void refresh()}
        >
          <refreshIcon.react tag="span" elementSize="normal" />
        </button>
      </header>
      {error && <ErrorNotice error={error} />}
      {!status && !error && (
        <div className="jp-MLXPanel-loading" role="status">
          Loading server status…
        </div>
      )}
      {status && (
        <section aria-label="Server status">
          <StatusList status={status} />
          {updated && (
            <div className="jp-MLXPanel-updated">
              {error ? 'Last updated ' : 'Updated '}
              {updated.toLocaleTimeString()}
            </div>
          )}
        </section>
      )}
    </div>
  );
}

/** The left-sidebar panel. */
export class MLXPanel extends ReactWidget {
  constructor(private readonly _serverSettings?: ServerConnection.ISettings) {
    super();
    this.id = PANEL_ID;
    this.addClass('jp-MLXPanel');
    this.title.icon = mlxIcon;
    this.title.caption = 'MLX';
  }

  /** Seconds between automatic refreshes (0: off). */
  get refreshInterval(): number {
    return this._interval;
  }

  set refreshInterval(value: number) {
    if (value !== this._interval) {
      this._interval = value;
      this.update();
    }
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.update();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.update();
  }

  protected render(): JSX.Element {
    return (
      <StatusView
        interval={this._interval}
        active={this.isVisible}
        settings={this._serverSettings}
      />
    );
  }

  private _interval = 5;
}
