/**
 * Profiles beside the models: each profile's models in order, its defaults and the aliases
 * pointing at it, with Chat; admins create, edit and delete them.
 */
import * as React from 'react';

import { useAction, useStore } from '../hooks';
import {
  aliasesOf,
  deleteProfile,
  IProfile,
  IProfileForm,
  profileBody,
  profileDefaults,
  profileForm,
  putProfile
} from '../profiles';
import { MLXService } from '../service';
import {
  Badge,
  Button,
  ErrorNotice,
  Facts,
  FormEnd,
  SectionHeader,
  TextField
} from './common';

function ProfileEditor({
  profile,
  service,
  onDone
}: {
  /** The profile edited; undefined: a new one. */
  profile?: IProfile;
  service: MLXService;
  onDone: () => void;
}): JSX.Element {
  const [form, setForm] = React.useState<IProfileForm>(profileForm(profile));
  const [problem, setProblem] = React.useState('');
  const action = useAction();
  const set =
    (key: keyof IProfileForm) =>
    (e: React.ChangeEvent<HTMLInputElement | HTMLTextAreaElement>) =>
      setForm(f => ({ ...f, [key]: e.target.value }));
  const save = (e: React.FormEvent) => {
    e.preventDefault();
    const checked = profileBody(form, profile);
    if ('error' in checked) {
      setProblem(checked.error);
      return;
    }
    setProblem('');
    void action.run('save', async () => {
      await putProfile(checked.name, checked.body, service.serverSettings);
      await service.refreshProfiles();
      onDone();
    });
  };
  return (
    <form
      className="jp-MLXPanel-form"
      onSubmit={save}
      aria-label={profile ? `Edit profile ${profile.name}` : 'New profile'}
    >
      <div className="jp-MLXPanel-grid">
        <TextField
          label="Name"
          value={form.name}
          onChange={set('name')}
          disabled={!!profile}
          placeholder="coder"
        />
        <TextField
          label="Temperature"
          value={form.temperature}
          onChange={set('temperature')}
          inputMode="decimal"
          placeholder="model's"
        />
        <TextField
          label="Max tokens"
          value={form.max_tokens}
          onChange={set('max_tokens')}
          inputMode="numeric"
          placeholder="server's"
        />
      </div>
      <label className="jp-MLXPanel-label">
        Models, in order (the first that is up serves)
        <textarea
          className="jp-MLXPanel-input"
          rows={2}
          value={form.models}
          onChange={set('models')}
          placeholder="local/my-model"
        />
      </label>
      <label className="jp-MLXPanel-label">
        System prompt
        <textarea
          className="jp-MLXPanel-input"
          rows={2}
          value={form.system}
          onChange={set('system')}
        />
      </label>
      <FormEnd
        problem={problem}
        action={action}
        errorTitle="Cannot save the profile"
      >
        <Button type="submit" kind="accept" busy={action.busy === 'save'}>
          Save profile
        </Button>
        <Button kind="minimal" onClick={onDone}>
          Cancel
        </Button>
      </FormEnd>
    </form>
  );
}

function ProfileItem({
  profile,
  aliases,
  service,
  onChat,
  onEdit
}: {
  profile: IProfile;
  aliases: string[];
  service: MLXService;
  onChat?: (model: string) => void;
  onEdit?: () => void;
}): JSX.Element {
  const action = useAction();
  const defaults = profileDefaults(profile);
  return (
    <li className="jp-MLXPanel-item" data-profile={profile.name}>
      <div className="jp-MLXPanel-itemHead">
        <span className="jp-MLXPanel-itemTitle">{profile.name}</span>
        <Badge kind="muted">profile</Badge>
      </div>
      <ol className="jp-MLXPanel-profileModels" aria-label="Models, in order">
        {profile.models.map(m => (
          <li key={m}>{m}</li>
        ))}
      </ol>
      <Facts
        items={[
          ['defaults', defaults.join(' · ')],
          ['aliases', aliases.join(', ')]
        ]}
      />
      {profile.system && (
        <div className="jp-MLXPanel-hint" title={profile.system}>
          System: {profile.system.slice(0, 120)}
          {profile.system.length > 120 ? '…' : ''}
        </div>
      )}
      {action.error && (
        <ErrorNotice
          error={action.error}
          title="Cannot delete the profile"
          onDismiss={action.clear}
        />
      )}
      <div className="jp-MLXPanel-itemActions">
        {onChat && (
          <Button
            label={`Chat with profile ${profile.name}`}
            onClick={() => onChat(profile.name)}
          >
            Chat
          </Button>
        )}
        {onEdit && (
          <Button label={`Edit profile ${profile.name}`} onClick={onEdit}>
            Edit
          </Button>
        )}
        {onEdit && (
          <Button
            kind="warn"
            busy={action.busy === 'delete'}
            label={`Delete profile ${profile.name}`}
            onClick={() =>
              void action.run('delete', async () => {
                await deleteProfile(profile.name, service.serverSettings);
                await service.refreshProfiles();
              })
            }
          >
            Delete
          </Button>
        )}
      </div>
    </li>
  );
}

export function ProfilesList({
  service,
  onChat
}: {
  service: MLXService;
  onChat?: (model: string) => void;
}): JSX.Element | null {
  const { profiles, aliases, error } = useStore(service.profiles);
  const admin = service.isAdmin;
  // The profile being edited: its name, '' for a new one, null when none.
  const [editing, setEditing] = React.useState<string | null>(null);
  if (!admin && !profiles.length) {
    return null;
  }
  return (
    <section aria-label="Profiles" className="jp-MLXPanel-subsection">
      <SectionHeader title="Profiles" level={4}>
        {admin && editing === null && (
          <Button kind="minimal" onClick={() => setEditing('')}>
            New profile
          </Button>
        )}
      </SectionHeader>
      {error && !error.isNotFound && (
        <ErrorNotice error={error} title="Cannot list profiles" />
      )}
      {editing === '' && (
        <ProfileEditor service={service} onDone={() => setEditing(null)} />
      )}
      {!profiles.length && editing === null && (
        <div className="jp-MLXPanel-hint">
          A profile is a model id of its own: models in order and their defaults
          (system prompt, temperature…).
        </div>
      )}
      {profiles.length > 0 && (
        <ul className="jp-MLXPanel-list" aria-label="Profiles">
          {profiles.map(p =>
            editing === p.name ? (
              <li key={p.name} className="jp-MLXPanel-item">
                <ProfileEditor
                  profile={p}
                  service={service}
                  onDone={() => setEditing(null)}
                />
              </li>
            ) : (
              <ProfileItem
                key={p.name}
                profile={p}
                aliases={aliasesOf(p.name, aliases)}
                service={service}
                onChat={onChat}
                onEdit={admin ? () => setEditing(p.name) : undefined}
              />
            )
          )}
        </ul>
      )}
    </section>
  );
}
