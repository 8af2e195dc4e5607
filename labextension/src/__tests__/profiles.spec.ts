const mockMakeRequest = jest.fn();
const mockSettings = { baseUrl: 'http://h/base/', wsUrl: 'ws://h/base/' };

jest.mock('@jupyterlab/services', () => ({
  ServerConnection: {
    makeSettings: () => mockSettings,
    makeRequest: (...args: unknown[]) => mockMakeRequest(...args)
  }
}));

import {
  aliasesOf,
  deleteProfile,
  IProfile,
  listProfiles,
  profileBody,
  profileDefaults,
  profileForm,
  putProfile
} from '../profiles';

const coder: IProfile = {
  name: 'coder',
  models: ['local/qwen-coder', 'remote/vllm/qwen-coder'],
  system: 'You are terse.',
  temperature: 0.2,
  max_tokens: 2048,
  keep_alive: 3600,
  chat_template_kwargs: { enable_thinking: false }
};

describe('profiles', () => {
  beforeEach(() => mockMakeRequest.mockReset());

  it('lists, writes and deletes through mlx/api/profiles', async () => {
    mockMakeRequest.mockImplementation(() =>
      Promise.resolve(
        new Response(
          JSON.stringify({ profiles: [coder], aliases: { 'gpt-5': 'coder' } })
        )
      )
    );
    expect(await listProfiles(mockSettings as any)).toEqual({
      profiles: [coder],
      aliases: { 'gpt-5': 'coder' }
    });
    await putProfile('my coder', { models: ['local/a'] }, mockSettings as any);
    await deleteProfile('coder', mockSettings as any);
    const [[, ,], [putUrl, put], [deleteUrl, del]] = mockMakeRequest.mock.calls;
    expect([putUrl, put.method, JSON.parse(put.body)]).toEqual([
      'http://h/base/mlx/api/profiles/my%20coder',
      'PUT',
      { models: ['local/a'] }
    ]);
    expect([deleteUrl, del.method]).toEqual([
      'http://h/base/mlx/api/profiles/coder',
      'DELETE'
    ]);
  });

  it('finds the aliases pointing at a profile, without case', () => {
    const aliases = { 'claude-*': 'Coder', 'gpt-5': 'coder', other: 'local/a' };
    expect(aliasesOf('coder', aliases)).toEqual(['claude-*', 'gpt-5']);
    expect(aliasesOf('writer', aliases)).toEqual([]);
  });

  it('says its defaults short', () => {
    expect(profileDefaults(coder)).toEqual([
      'temperature 0.2',
      'max 2,048 tokens',
      'keep-alive 3600 s'
    ]);
    expect(profileDefaults({ name: 'x', models: ['local/a'] })).toEqual([]);
  });

  it('edits a profile without losing the defaults the editor does not show', () => {
    const form = { ...profileForm(coder), temperature: '0.5', system: '' };
    expect(form.models).toBe('local/qwen-coder\nremote/vllm/qwen-coder');
    expect(profileBody(form, coder)).toEqual({
      name: 'coder',
      body: {
        models: ['local/qwen-coder', 'remote/vllm/qwen-coder'],
        temperature: 0.5,
        max_tokens: 2048,
        keep_alive: 3600,
        chat_template_kwargs: { enable_thinking: false }
      }
    });
  });

  it('makes a new profile from models in order, commas or lines', () => {
    expect(
      profileBody({
        name: 'fast',
        models: 'local/a, local/b\nlocal/c',
        system: 'Hi',
        temperature: '',
        max_tokens: '64'
      })
    ).toEqual({
      name: 'fast',
      body: {
        models: ['local/a', 'local/b', 'local/c'],
        system: 'Hi',
        max_tokens: 64
      }
    });
  });

  it('refuses what the server would refuse, in words', () => {
    const ok = {
      name: 'fast',
      models: 'local/a',
      system: '',
      temperature: '',
      max_tokens: ''
    };
    expect(profileBody({ ...ok, name: 'no spaces' })).toHaveProperty('error');
    expect(profileBody({ ...ok, models: ' ' })).toEqual({
      error: 'Models: 1 to 8 model ids, in order.'
    });
    expect(
      profileBody({ ...ok, models: Array(9).fill('local/a').join(',') })
    ).toHaveProperty('error');
    expect(profileBody({ ...ok, temperature: '3' })).toEqual({
      error: 'Temperature: a number from 0 to 2.'
    });
    expect(profileBody({ ...ok, max_tokens: 'abc' })).toEqual({
      error: 'Max tokens: a whole number of at least 1.'
    });
  });
});
