/**
 * Small building blocks shared by the sections: notices, empty states, meters and buttons.
 */
import * as React from 'react';

import { ApiError } from '../api';
import { formatBytes } from '../format';

/** Title and advice for an error, by status and reason. */
export function describeError(error: Error): {
  title: string;
  hint: string;
  warning: boolean;
} {
  if (!(error instanceof ApiError)) {
    return { title: 'Error', hint: '', warning: false };
  }
  if (error.status === 403 && error.reason === 'pending') {
    return {
      title: 'Pending approval',
      hint:
        'An administrator has to approve your account before you can use MLX models. ' +
        'This panel checks again on its own.',
      warning: true
    };
  }
  if (error.status === 403 && error.reason === 'disabled') {
    return {
      title: 'Account disabled',
      hint: 'Ask an administrator to enable it again.',
      warning: true
    };
  }
  if (error.status === 403 && error.reason === 'admin_required') {
    return { title: 'Administrators only', hint: '', warning: true };
  }
  if (error.isForbidden) {
    return { title: 'Pending approval', hint: '', warning: true };
  }
  if (error.status === 401) {
    return {
      title: 'Not signed in',
      hint: 'Sign in to Jupyter again (reload the page).',
      warning: false
    };
  }
  if (error.isNetworkError) {
    return {
      title: 'Server unreachable',
      hint: 'Is the Jupyter server still running? The panel retries on its own.',
      warning: false
    };
  }
  if (error.isNotFound) {
    return {
      title: 'Not available',
      hint: 'This server does not offer this yet.',
      warning: true
    };
  }
  return { title: 'Error', hint: '', warning: false };
}

export function ErrorNotice({
  error,
  title,
  onDismiss
}: {
  error: Error;
  title?: string;
  onDismiss?: () => void;
}): JSX.Element {
  const info = describeError(error);
  return (
    <div
      className={`jp-MLXPanel-notice ${info.warning ? 'jp-mod-warning' : 'jp-mod-error'}`}
      role="alert"
    >
      <div className="jp-MLXPanel-noticeHead">
        <strong>{title ?? info.title}</strong>
        {onDismiss && (
          <button
            type="button"
            className="jp-MLXPanel-iconButton"
            aria-label="Dismiss"
            title="Dismiss"
            onClick={onDismiss}
          >
            ×
          </button>
        )}
      </div>
      <div className="jp-MLXPanel-noticeMessage">{error.message}</div>
      {info.hint && <div className="jp-MLXPanel-noticeHint">{info.hint}</div>}
    </div>
  );
}

export function Empty({
  children
}: {
  children: React.ReactNode;
}): JSX.Element {
  return <div className="jp-MLXPanel-empty">{children}</div>;
}

export function Loading({
  children
}: {
  children: React.ReactNode;
}): JSX.Element {
  return (
    <div className="jp-MLXPanel-loading" role="status">
      {children}
    </div>
  );
}

/** A horizontal bar: `value` of `max`, as a meter (memory) or a progress bar (downloads). */
export function Bar({
  value,
  max,
  label,
  kind = 'meter',
  text
}: {
  value: number | null | undefined;
  max: number | null | undefined;
  label: string;
  kind?: 'meter' | 'progressbar';
  text?: string;
}): JSX.Element {
  const known = typeof value === 'number' && typeof max === 'number' && max > 0;
  const fraction = known
    ? Math.max(0, Math.min(1, (value as number) / (max as number)))
    : 0;
  // Something in use always shows as a sliver, however small against the budget.
  const shown = fraction > 0 ? Math.max(fraction, 0.015) : 0;
  const level =
    fraction >= 0.9 ? 'jp-mod-high' : fraction >= 0.7 ? 'jp-mod-medium' : '';
  const props: React.HTMLAttributes<HTMLDivElement> & Record<string, unknown> =
    {
      role: kind,
      'aria-label': label,
      'aria-valuemin': 0,
      'aria-valuemax': 100
    };
  if (known) {
    props['aria-valuenow'] = Math.round(fraction * 100);
  }
  if (text) {
    props['aria-valuetext'] = text;
  }
  return (
    <div
      className={`jp-MLXPanel-bar ${level} ${known ? '' : 'jp-mod-indeterminate'}`}
      {...props}
    >
      <div
        className="jp-MLXPanel-barFill"
        style={{ width: `${(shown * 100).toFixed(1)}%` }}
      />
    </div>
  );
}

/** "1.2 GiB of 18 GiB" under a memory bar. */
export function memoryText(
  used: number | null | undefined,
  max: number | null | undefined
): string {
  return typeof max === 'number' && max > 0
    ? `${formatBytes(used ?? 0)} of ${formatBytes(max)}`
    : formatBytes(used);
}

export function Badge({
  children,
  kind = '',
  title
}: {
  children: React.ReactNode;
  kind?: string;
  title?: string;
}): JSX.Element {
  return (
    <span
      className={`jp-MLXPanel-badge ${kind ? `jp-mod-${kind}` : ''}`}
      title={title}
    >
      {children}
    </span>
  );
}

/** A model's kind as a badge; nothing for text models (most of them) or an unknown kind. */
export function KindBadge({
  kind
}: {
  kind?: string | null;
}): JSX.Element | null {
  if (!kind || kind === 'text') {
    return null;
  }
  return (
    <Badge kind="kind" title={`A ${kind} model`}>
      {kind}
    </Badge>
  );
}

export function Button({
  children,
  onClick,
  busy,
  disabled,
  kind = 'default',
  title,
  type = 'button',
  pressed,
  label
}: {
  children: React.ReactNode;
  onClick?: () => void;
  busy?: boolean;
  disabled?: boolean;
  kind?: 'default' | 'accept' | 'warn' | 'minimal';
  title?: string;
  type?: 'button' | 'submit';
  pressed?: boolean;
  label?: string;
}): JSX.Element {
  return (
    <button
      type={type}
      className={`jp-MLXPanel-button jp-mod-${kind}`}
      onClick={onClick}
      disabled={disabled || busy}
      aria-busy={busy || undefined}
      aria-pressed={pressed}
      aria-label={label}
      title={title}
    >
      {children}
    </button>
  );
}

/** A heading row with actions on the right. */
export function SectionHeader({
  title,
  children,
  level = 3
}: {
  title: string;
  children?: React.ReactNode;
  level?: 3 | 4;
}): JSX.Element {
  const Heading = level === 3 ? 'h3' : 'h4';
  return (
    <div className="jp-MLXPanel-sectionHeader">
      <Heading className="jp-MLXPanel-sectionTitle">{title}</Heading>
      {children && <div className="jp-MLXPanel-sectionActions">{children}</div>}
    </div>
  );
}

/** Facts as small "name value" chips. */
export function Facts({
  items
}: {
  items: [string, React.ReactNode][];
}): JSX.Element | null {
  const shown = items.filter(
    ([, v]) => v !== null && v !== undefined && v !== '' && v !== '—'
  );
  if (!shown.length) {
    return null;
  }
  return (
    <dl className="jp-MLXPanel-facts">
      {shown.map(([name, value]) => (
        <div key={name} className="jp-MLXPanel-fact">
          <dt>{name}</dt>
          <dd>{value}</dd>
        </div>
      ))}
    </dl>
  );
}

/** A labelled text input of a form's grid. */
export function TextField({
  label,
  ...input
}: {
  label: string;
} & React.InputHTMLAttributes<HTMLInputElement>): JSX.Element {
  return (
    <label>
      {label}
      <input className="jp-MLXPanel-input" {...input} />
    </label>
  );
}

/**
 * A form's end: why it cannot be sent yet (`problem`), the server's refusal (`action.error`,
 * titled `errorTitle`) and its buttons.
 */
export function FormEnd({
  problem,
  action,
  errorTitle,
  children
}: {
  problem: string;
  action: { error: Error | null; clear: () => void };
  errorTitle: string;
  children: React.ReactNode;
}): JSX.Element {
  return (
    <>
      {problem && (
        <div className="jp-MLXPanel-hint jp-mod-warn" role="alert">
          {problem}
        </div>
      )}
      {action.error && (
        <ErrorNotice
          error={action.error}
          title={errorTitle}
          onDismiss={action.clear}
        />
      )}
      <div className="jp-MLXPanel-itemActions">{children}</div>
    </>
  );
}
