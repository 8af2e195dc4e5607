/**
 * The left-sidebar panel: server status on top, then the sections as tabs
 * (Models · Downloads · Pool · Jobs · Activity · Users).
 */
import { ReactWidget, refreshIcon } from '@jupyterlab/ui-components';
import { Message } from '@lumino/messaging';
import * as React from 'react';

import { IStatus, IUser, listUsers } from './api';
import { isActive } from './downloads';
import { isJobActive } from './jobs';
import { formatBytes, plural } from './format';
import { usePoll, useStore } from './hooks';
import { mlxIcon } from './icon';
import { ActivitySection } from './sections/ActivitySection';
import { ErrorNotice, Loading } from './sections/common';
import { DownloadsSection } from './sections/DownloadsSection';
import { JobsSection } from './sections/JobsSection';
import { ModelsSection } from './sections/ModelsSection';
import { PoolSection } from './sections/PoolSection';
import { UsersSection } from './sections/UsersSection';
import { MLXService, SectionId, SECTIONS } from './service';

export const PANEL_ID = 'jupyter-mlx-manager:panel';

interface IPanelProps {
  service: MLXService;
  /** Seconds between refreshes; 0 or less: only on demand. */
  interval: number;
  /** Poll only while the panel is visible. */
  active: boolean;
  onChat?: (model: string) => void;
  /** Insert a code cell into the notebook in focus (or a new one). */
  onSendToNotebook?: (code: string) => Promise<void>;
  onPendingUsers?: (count: number) => void;
}

function Row({
  name,
  value
}: {
  name: string;
  value: React.ReactNode;
}): JSX.Element {
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
    deviceText =
      name && type && name !== type ? `${name} (${type})` : name || type || '—';
  }
  const memoryText = memory
    ? `${formatBytes(memory.available_bytes)} free of ${formatBytes(memory.total_bytes)}`
    : '—';
  let poolText = '—';
  if (pool) {
    const loaded = pool.loaded_models ?? pool.models?.length ?? 0;
    const max = pool.max_loaded_models ?? pool.limits?.max_loaded_models;
    poolText =
      typeof max === 'number'
        ? `${loaded} / ${max} models loaded`
        : `${plural(loaded, 'model')} loaded`;
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

function Tabs({
  tabs,
  selected,
  onSelect
}: {
  tabs: { id: SectionId; label: string; badge?: number; badgeLabel?: string }[];
  selected: SectionId;
  onSelect: (id: SectionId) => void;
}): JSX.Element {
  const refs = React.useRef<Record<string, HTMLButtonElement | null>>({});
  const onKeyDown = (e: React.KeyboardEvent) => {
    const index = tabs.findIndex(t => t.id === selected);
    let next = -1;
    if (e.key === 'ArrowRight' || e.key === 'ArrowDown') {
      next = (index + 1) % tabs.length;
    } else if (e.key === 'ArrowLeft' || e.key === 'ArrowUp') {
      next = (index - 1 + tabs.length) % tabs.length;
    } else if (e.key === 'Home') {
      next = 0;
    } else if (e.key === 'End') {
      next = tabs.length - 1;
    }
    if (next >= 0) {
      e.preventDefault();
      onSelect(tabs[next].id);
      refs.current[tabs[next].id]?.focus();
    }
  };
  return (
    <div
      className="jp-MLXPanel-tabs"
      role="tablist"
      aria-label="MLX sections"
      onKeyDown={onKeyDown}
    >
      {tabs.map(t => (
        <button
          key={t.id}
          ref={el => {
            refs.current[t.id] = el;
          }}
          type="button"
          role="tab"
          id={`jp-MLXPanel-tab-${t.id}`}
          aria-controls={`jp-MLXPanel-tabpanel-${t.id}`}
          aria-selected={t.id === selected}
          tabIndex={t.id === selected ? 0 : -1}
          className={`jp-MLXPanel-tab ${t.id === selected ? 'jp-mod-selected' : ''}`}
          data-section={t.id}
          onClick={() => onSelect(t.id)}
        >
          {t.label}
          {!!t.badge && (
            <span
              className="jp-MLXPanel-tabBadge"
              aria-label={t.badgeLabel}
              title={t.badgeLabel}
            >
              {t.badge}
            </span>
          )}
        </button>
      ))}
    </div>
  );
}

function PanelView({
  service,
  interval,
  active,
  onChat,
  onSendToNotebook,
  onPendingUsers
}: IPanelProps): JSX.Element {
  const { status, error, loading, updated } = useStore(service.store);
  const { section } = useStore(service.ui);
  const downloads = useStore(service.downloads.store).downloads;
  const isAdmin = !!status?.user?.is_admin;
  const blocked =
    !!error && (!status || error.isForbidden || error.status === 401);

  // Admins: the user list feeds both the Users section and its pending badge.
  const [users, setUsers] = React.useState<IUser[] | null>(null);
  const [usersError, setUsersError] = React.useState<Error | null>(null);
  const loadUsers = React.useCallback(async () => {
    try {
      setUsers(await listUsers(service.serverSettings));
      setUsersError(null);
    } catch (err) {
      setUsersError(err as Error);
      throw err; // shown above; the poll backs off
    }
  }, [service]);
  const reloadUsers = usePoll(
    loadUsers,
    interval,
    active && isAdmin && !blocked
  );
  const pending = users?.filter(u => u.status === 'pending').length ?? 0;
  React.useEffect(
    () => onPendingUsers?.(isAdmin ? pending : 0),
    [pending, isAdmin, onPendingUsers]
  );

  const activeDownloads = downloads.filter(d => isActive(d.status)).length;
  const activeJobs = useStore(service.jobs.store).jobs.filter(
    isJobActive
  ).length;
  const tabs = SECTIONS.filter(s => s.id !== 'users' || isAdmin).map(s => ({
    ...s,
    badge:
      s.id === 'users'
        ? pending
        : s.id === 'downloads'
          ? activeDownloads
          : s.id === 'jobs'
            ? activeJobs
            : 0,
    badgeLabel:
      s.id === 'users'
        ? `${plural(pending, 'user')} waiting for approval`
        : s.id === 'downloads'
          ? `${plural(activeDownloads, 'download')} running`
          : s.id === 'jobs'
            ? `${plural(activeJobs, 'job')} queued or running`
            : undefined
  }));
  const current = tabs.some(t => t.id === section) ? section : 'models';
  const props = { service, interval, onChat, onSendToNotebook };

  return (
    <div className="jp-MLXPanel-body" aria-busy={loading}>
      <header className="jp-MLXPanel-header">
        <h2 className="jp-MLXPanel-title">MLX Manager</h2>
        <button
          type="button"
          className="jp-MLXPanel-refresh jp-Button jp-mod-minimal"
          title="Refresh status"
          aria-label="Refresh status"
          onClick={() => void service.refresh()}
        >
          <refreshIcon.react tag="span" elementSize="normal" />
        </button>
      </header>
      {error && <ErrorNotice error={error} />}
      {!status && !error && <Loading>Loading server status…</Loading>}
      {status && !blocked && (
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
      {status && !blocked && (
        <>
          <Tabs
            tabs={tabs}
            selected={current}
            onSelect={id => service.openSection(id)}
          />
          <div
            className="jp-MLXPanel-tabpanel"
            role="tabpanel"
            id={`jp-MLXPanel-tabpanel-${current}`}
            aria-labelledby={`jp-MLXPanel-tab-${current}`}
            data-section={current}
          >
            {active && current === 'models' && <ModelsSection {...props} />}
            {active && current === 'downloads' && (
              <DownloadsSection {...props} />
            )}
            {active && current === 'pool' && <PoolSection {...props} />}
            {active && current === 'jobs' && <JobsSection {...props} />}
            {active && current === 'activity' && <ActivitySection {...props} />}
            {active && current === 'users' && (
              <UsersSection
                {...props}
                users={users}
                error={usersError}
                reload={reloadUsers}
              />
            )}
          </div>
        </>
      )}
    </div>
  );
}

/** The left-sidebar panel. */
export class MLXPanel extends ReactWidget {
  constructor(
    private readonly _service: MLXService,
    private readonly _onChat?: (model: string) => void,
    private readonly _onSendToNotebook?: (code: string) => Promise<void>
  ) {
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
    void this._service.refresh();
    this.update();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.update();
  }

  protected render(): JSX.Element {
    return (
      <PanelView
        service={this._service}
        interval={this._interval}
        active={this.isVisible}
        onChat={this._onChat}
        onSendToNotebook={this._onSendToNotebook}
        onPendingUsers={this._onPending}
      />
    );
  }

  private _onPending = (count: number) => {
    this.title.caption = count
      ? `MLX (${plural(count, 'user')} waiting for approval)`
      : 'MLX';
  };

  private _interval = 5;
}
