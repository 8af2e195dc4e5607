/**
 * Users (administrators only): approve, disable, promote and demote accounts.
 * The list itself is polled by the panel (it also feeds the pending-users badge).
 */
import * as React from 'react';

import { IUser, updateUser } from '../api';
import { formatRelative, plural } from '../format';
import { useAction } from '../hooks';
import { Badge, Button, Empty, ErrorNotice, Loading } from './common';
import { ISectionProps } from './ModelsSection';

export interface IUsersProps extends ISectionProps {
  users: IUser[] | null;
  error: Error | null;
  reload: () => Promise<void>;
}

/** Pending first, then by name. */
export function sortUsers(users: IUser[]): IUser[] {
  const rank = (u: IUser) =>
    u.status === 'pending' ? 0 : u.status === 'approved' ? 1 : 2;
  return users
    .slice()
    .sort((a, b) => rank(a) - rank(b) || a.username.localeCompare(b.username));
}

function statusKind(status: string): string {
  return status === 'approved' ? 'ok' : status === 'pending' ? 'warn' : 'muted';
}

export function UsersSection({
  service,
  users,
  error,
  reload
}: IUsersProps): JSX.Element {
  const me = service.store.state.status?.user;
  const action = useAction();

  const change = (
    user: IUser,
    what: string,
    patch: { status?: string; is_admin?: boolean }
  ) =>
    void action.run(`${user.id}:${what}`, async () => {
      try {
        await updateUser(user.id, patch, service.serverSettings);
      } finally {
        await reload();
      }
    });

  if (error && !users) {
    return (
      <div className="jp-MLXPanel-section">
        <ErrorNotice error={error} title="Cannot list users" />
      </div>
    );
  }
  if (!users) {
    return (
      <div className="jp-MLXPanel-section">
        <Loading>Loading users…</Loading>
      </div>
    );
  }
  const pending = users.filter(u => u.status === 'pending').length;
  return (
    <div className="jp-MLXPanel-section">
      {action.error && (
        <ErrorNotice
          error={action.error}
          title="Change refused"
          onDismiss={action.clear}
        />
      )}
      <div className="jp-MLXPanel-itemMeta">
        <span>{plural(users.length, 'user')}</span>
        <span data-field="pending-count">
          {pending
            ? `${pending} waiting for approval`
            : 'nobody waiting for approval'}
        </span>
      </div>
      {users.length === 0 && <Empty>No users yet.</Empty>}
      <ul className="jp-MLXPanel-list" aria-label="Users">
        {sortUsers(users).map(u => {
          const self = me?.id === u.id;
          const busy = (what: string) => action.busy === `${u.id}:${what}`;
          return (
            <li key={u.id} className="jp-MLXPanel-item" data-user={u.username}>
              <div className="jp-MLXPanel-itemHead">
                <span className="jp-MLXPanel-itemTitle">
                  {u.username}
                  {self ? ' (you)' : ''}
                </span>
                <Badge kind={statusKind(u.status)}>{u.status}</Badge>
                {u.is_admin && <Badge kind="accent">admin</Badge>}
              </div>
              {u.created_at && (
                <div className="jp-MLXPanel-itemMeta">
                  <span>joined {formatRelative(u.created_at)}</span>
                </div>
              )}
              <div className="jp-MLXPanel-itemActions">
                {u.status !== 'approved' && (
                  <Button
                    kind="accept"
                    busy={busy('approve')}
                    onClick={() => change(u, 'approve', { status: 'approved' })}
                    label={`Approve ${u.username}`}
                  >
                    {u.status === 'disabled' ? 'Enable' : 'Approve'}
                  </Button>
                )}
                {u.status !== 'disabled' && !self && (
                  <Button
                    kind="warn"
                    busy={busy('disable')}
                    onClick={() => change(u, 'disable', { status: 'disabled' })}
                    label={`Disable ${u.username}`}
                  >
                    Disable
                  </Button>
                )}
                {u.status === 'approved' && !u.is_admin && (
                  <Button
                    busy={busy('admin')}
                    onClick={() => change(u, 'admin', { is_admin: true })}
                    label={`Make ${u.username} an administrator`}
                  >
                    Promote
                  </Button>
                )}
                {u.is_admin && !self && (
                  <Button
                    busy={busy('admin')}
                    onClick={() => change(u, 'admin', { is_admin: false })}
                    label={`Remove administrator rights from ${u.username}`}
                  >
                    Demote
                  </Button>
                )}
              </div>
            </li>
          );
        })}
      </ul>
    </div>
  );
}
