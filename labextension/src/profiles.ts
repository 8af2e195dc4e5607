/**
 * Model profiles and aliases (`mlx/api/profiles`): a profile's name is a model id clients can
 * ask for; it names models in order (the first that is up serves) and their defaults. Everyone
 * reads them; admins write them. No DOM (unit-tested in node).
 */
import { ServerConnection } from '@jupyterlab/services';

import { jsonInit, requestAPI } from './api';

export interface IProfile {
  name: string;
  models: string[];
  description?: string;
  system?: string;
  temperature?: number;
  top_p?: number;
  max_tokens?: number;
  keep_alive?: number;
  context_length?: number;
  [key: string]: unknown;
}

export interface IProfiles {
  profiles: IProfile[];
  /** Client names (glob patterns allowed) → profile or model. */
  aliases: Record<string, string>;
}

export async function listProfiles(
  settings?: ServerConnection.ISettings
): Promise<IProfiles> {
  const reply = await requestAPI<IProfiles>('profiles', {}, settings);
  return { profiles: reply?.profiles ?? [], aliases: reply?.aliases ?? {} };
}

export function putProfile(
  name: string,
  body: Omit<IProfile, 'name'>,
  settings?: ServerConnection.ISettings
): Promise<IProfile> {
  return requestAPI<IProfile>(
    `profiles/${encodeURIComponent(name)}`,
    jsonInit('PUT', body),
    settings
  );
}

export function deleteProfile(
  name: string,
  settings?: ServerConnection.ISettings
): Promise<unknown> {
  return requestAPI(
    `profiles/${encodeURIComponent(name)}`,
    { method: 'DELETE' },
    settings
  );
}

/** The aliases that point at `name` (profile names are matched without case, as the server does). */
export function aliasesOf(
  name: string,
  aliases: Record<string, string>
): string[] {
  return Object.entries(aliases)
    .filter(([, target]) => target.toLowerCase() === name.toLowerCase())
    .map(([alias]) => alias)
    .sort();
}

/** "temperature 0.2 · max 2,048 tokens · keep-alive 3600 s": a profile's defaults, short. */
export function profileDefaults(profile: IProfile): string[] {
  const out: string[] = [];
  if (typeof profile.temperature === 'number') {
    out.push(`temperature ${profile.temperature}`);
  }
  if (typeof profile.top_p === 'number') {
    out.push(`top_p ${profile.top_p}`);
  }
  if (typeof profile.max_tokens === 'number') {
    out.push(`max ${profile.max_tokens.toLocaleString('en-US')} tokens`);
  }
  if (typeof profile.context_length === 'number') {
    out.push(`context ${profile.context_length.toLocaleString('en-US')}`);
  }
  if (typeof profile.keep_alive === 'number') {
    out.push(`keep-alive ${profile.keep_alive} s`);
  }
  return out;
}

/** The profile editor as typed. */
export interface IProfileForm {
  name: string;
  /** Model ids, one per line or separated by commas, in order. */
  models: string;
  system: string;
  temperature: string;
  max_tokens: string;
}

export function profileForm(profile?: IProfile): IProfileForm {
  return {
    name: profile?.name ?? '',
    models: (profile?.models ?? []).join('\n'),
    system: profile?.system ?? '',
    temperature:
      typeof profile?.temperature === 'number'
        ? String(profile.temperature)
        : '',
    max_tokens:
      typeof profile?.max_tokens === 'number' ? String(profile.max_tokens) : ''
  };
}

/**
 * The PUT body of an edited profile: the fields of the editor replace the profile's, every
 * other default it had (top_p, keep_alive, chat_template_kwargs…) is kept. Or what is wrong.
 */
export function profileBody(
  form: IProfileForm,
  before?: IProfile
): { name: string; body: Omit<IProfile, 'name'> } | { error: string } {
  const name = form.name.trim();
  if (!/^[A-Za-z0-9](?:[A-Za-z0-9._:-]{0,62}[A-Za-z0-9])?$/.test(name)) {
    return {
      error: "Name: 1-64 letters, digits, '.', '_', ':' or '-'."
    };
  }
  const models = form.models
    .split(/[\s,]+/)
    .map(m => m.trim())
    .filter(Boolean);
  if (models.length < 1 || models.length > 8) {
    return { error: 'Models: 1 to 8 model ids, in order.' };
  }
  const body: Omit<IProfile, 'name'> & { name?: string } = {
    ...before,
    models
  };
  delete body.name;
  delete body.model;
  for (const key of ['system', 'temperature', 'max_tokens'] as const) {
    delete body[key];
  }
  if (form.system.trim()) {
    body.system = form.system;
  }
  if (form.temperature.trim()) {
    const t = Number(form.temperature);
    if (!(t >= 0 && t <= 2)) {
      return { error: 'Temperature: a number from 0 to 2.' };
    }
    body.temperature = t;
  }
  if (form.max_tokens.trim()) {
    const n = Number(form.max_tokens);
    if (!Number.isInteger(n) || n < 1) {
      return { error: 'Max tokens: a whole number of at least 1.' };
    }
    body.max_tokens = n;
  }
  return { name, body };
}
