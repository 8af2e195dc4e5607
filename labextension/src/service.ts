/**
 * The state the sidebar, the status bar, the commands and the chat panel share: server
 * status and pool (polled every `refreshInterval` seconds), local models, downloads, and
 * which sidebar section is open.
 */
import { ServerConnection } from '@jupyterlab/services';

import {
  ApiError,
  getPool,
  IHubModel,
  ISearchQuery,
  getStatus,
  ILoadOptions,
  ILocalModel,
  IPool,
  IPoolModel,
  IStatus,
  listLocalModels,
  loadModel,
  searchModels,
  toApiError,
  unloadModel
} from './api';
import { DownloadsModel } from './downloads';
import { JobsModel } from './jobs';
import { IProfile, listProfiles } from './profiles';
import { PolledTask, Store } from './store';

export type SectionId =
  'models' | 'downloads' | 'pool' | 'jobs' | 'activity' | 'users';

export const SECTIONS: { id: SectionId; label: string }[] = [
  { id: 'models', label: 'Models' },
  { id: 'downloads', label: 'Downloads' },
  { id: 'pool', label: 'Pool' },
  { id: 'jobs', label: 'Jobs' },
  { id: 'activity', label: 'Activity' },
  { id: 'users', label: 'Users' }
];

export interface IServiceState {
  status: IStatus | null;
  pool: IPool | null;
  /** Why the last status request failed (pending user, server unreachable…). */
  error: ApiError | null;
  loading: boolean;
  updated: Date | null;
}

export interface IModelsState {
  models: ILocalModel[];
  /** False when the server only gave ids (no `models/local` yet). */
  detailed: boolean;
  error: ApiError | null;
  loaded: boolean;
}

export interface IUiState {
  section: SectionId;
}

/** The Hub search of the Models section: kept here so that it outlives switching tabs. */
export interface ISearchState {
  query: ISearchQuery;
  results: IHubModel[] | null;
  error: ApiError | null;
  searching: boolean;
  /** "Downloading … " after a download started from a result. */
  notice: string;
}

/** Model profiles and the aliases pointing at them (`mlx/api/profiles`). */
export interface IProfilesState {
  profiles: IProfile[];
  aliases: Record<string, string>;
  error: ApiError | null;
  loaded: boolean;
}

/** The notebook in focus (JupyterLab's notebook tracker), for "This notebook" in Activity. */
export interface IFocusState {
  /** Its path on the server (what audit records name), or null when none is open. */
  notebook: string | null;
}

export class MLXService {
  readonly store = new Store<IServiceState>({
    status: null,
    pool: null,
    error: null,
    loading: true,
    updated: null
  });
  readonly models = new Store<IModelsState>({
    models: [],
    detailed: true,
    error: null,
    loaded: false
  });
  readonly ui = new Store<IUiState>({ section: 'models' });
  readonly search = new Store<ISearchState>({
    query: { q: '', sort: 'downloads', limit: 20 },
    results: null,
    error: null,
    searching: false,
    notice: ''
  });
  readonly focus = new Store<IFocusState>({ notebook: null });
  readonly profiles = new Store<IProfilesState>({
    profiles: [],
    aliases: {},
    error: null,
    loaded: false
  });
  readonly downloads: DownloadsModel;
  /** Workbench jobs; kept here so that a running job is followed while the panel is closed. */
  readonly jobs: JobsModel;

  constructor(
    readonly serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {
    this._poller = new PolledTask(() => this._refresh(), {
      interval: 5,
      name: 'jupyter-mlx-manager:status'
    });
    this.downloads = new DownloadsModel(serverSettings);
    this.downloads.onFinished = () => void this.refreshModels();
    this.jobs = new JobsModel(serverSettings);
    this.jobs.onFinished = () => void this.refreshModels();
  }

  /** Seconds between status/pool refreshes (0: only on demand). */
  get refreshInterval(): number {
    return this._poller.interval;
  }

  set refreshInterval(seconds: number) {
    this._poller.interval = seconds;
  }

  /** Keep-alive (seconds) for loads started here; undefined: the server's default. */
  defaultKeepAlive: number | undefined = undefined;

  get isAdmin(): boolean {
    return !!this.store.state.status?.user?.is_admin;
  }

  /** The models loaded now. */
  get loadedModels(): IPoolModel[] {
    return this.store.state.pool?.models ?? [];
  }

  start(): void {
    void this._poller.start();
  }

  refresh(): Promise<void> {
    return this._poller.refresh();
  }

  openSection(section: SectionId): void {
    this.ui.set({ section });
  }

  /** Search the Hub with the stored query; results and error land in `search`. */
  async searchHub(): Promise<void> {
    const query = this.search.state.query;
    this.search.set({ searching: true, error: null, notice: '' });
    try {
      const results = await searchModels(query, this.serverSettings);
      this.search.set({ results, searching: false });
    } catch (err) {
      this.search.set({
        error: toApiError(err),
        results: null,
        searching: false
      });
    }
  }

  async refreshProfiles(): Promise<void> {
    try {
      const { profiles, aliases } = await listProfiles(this.serverSettings);
      this.profiles.set({ profiles, aliases, error: null, loaded: true });
    } catch (err) {
      this.profiles.set({ error: toApiError(err), loaded: true });
    }
  }

  async refreshModels(): Promise<void> {
    try {
      const { models, detailed } = await listLocalModels(this.serverSettings);
      this.models.set({ models, detailed, error: null, loaded: true });
    } catch (err) {
      this.models.set({ error: toApiError(err), loaded: true });
    }
  }

  async load(model: string, options: ILoadOptions = {}): Promise<IPoolModel> {
    const keepAlive = options.keep_alive ?? this.defaultKeepAlive;
    const loading = this._markLoading(model, true);
    try {
      return await loadModel(
        model,
        { ...options, keep_alive: keepAlive },
        this.serverSettings
      );
    } finally {
      if (loading) {
        this._markLoading(model, false);
      }
      await Promise.all([this.refresh(), this.refreshModels()]);
    }
  }

  /** Change pin / keep-alive of a loaded model (the server's load call does both). */
  async update(model: string, options: ILoadOptions): Promise<void> {
    await loadModel(model, options, this.serverSettings);
    await this.refresh();
  }

  async unload(model: string): Promise<void> {
    try {
      await unloadModel(model, this.serverSettings);
    } finally {
      await Promise.all([this.refresh(), this.refreshModels()]);
    }
  }

  dispose(): void {
    this._poller.dispose();
    this.downloads.dispose();
    this.jobs.dispose();
  }

  /** Show a model as loading at once (the server lists it too, once asked). */
  private _markLoading(model: string, on: boolean): boolean {
    const pool = this.store.state.pool;
    if (!pool) {
      return false;
    }
    const loading = new Set(pool.loading ?? []);
    if (
      on === loading.has(model) ||
      (on && pool.models.some(m => m.model === model))
    ) {
      return false;
    }
    if (on) {
      loading.add(model);
    } else {
      loading.delete(model);
    }
    this.store.set({ pool: { ...pool, loading: [...loading] } });
    return true;
  }

  private async _refresh(): Promise<void> {
    this.store.set({ loading: true });
    let status: IStatus;
    try {
      status = await getStatus(this.serverSettings);
    } catch (err) {
      const error = toApiError(err);
      this.store.set({ error, loading: false });
      throw error; // stored for the views; the rejection makes the poll back off
    }
    let pool: IPool | null = this.store.state.pool;
    try {
      pool = await getPool(this.serverSettings);
    } catch {
      // the status is what matters; keep the last pool
    }
    const wasDown =
      this.store.state.error !== null || !this.store.state.updated;
    this.store.set({
      status,
      pool,
      error: null,
      loading: false,
      updated: new Date()
    });
    if (wasDown) {
      // first contact, or back after an outage/approval: fetch the rest once
      void this.refreshModels();
      void this.refreshProfiles();
      void this.downloads.refresh();
    }
  }

  private _poller: PolledTask;
}
