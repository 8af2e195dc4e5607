import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import {
  ICommandPalette,
  InputDialog,
  Notification,
  WidgetTracker
} from '@jupyterlab/apputils';
import { ICompletionProviderManager } from '@jupyterlab/completer';
import {
  INotebookTracker,
  NotebookActions,
  NotebookPanel
} from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';

import { isChatKind } from './chat';
import { ChatPanel } from './chatpanel';
import { parseKeepAlive } from './format';
import { mlxIcon } from './icon';
import { DEFAULT_MAX_TOKENS, MLXInlineProvider } from './inline';
import { MLXPanel } from './panel';
import { MLXService, SectionId, SECTIONS } from './service';
import { MLXStatusItem } from './statusbar';

const PLUGIN_ID = 'jupyter-mlx-manager:plugin';

export namespace CommandIDs {
  export const open = 'jupyter-mlx-manager:open';
  export const loadModel = 'jupyter-mlx-manager:load-model';
  export const downloadModel = 'jupyter-mlx-manager:download-model';
  export const openChat = 'jupyter-mlx-manager:open-chat';
}

const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'MLX Manager: local MLX models in JupyterLab (sidebar, status bar, commands, chat).',
  autoStart: true,
  optional: [
    ISettingRegistry,
    ILayoutRestorer,
    ICommandPalette,
    IStatusBar,
    INotebookTracker,
    IRenderMimeRegistry
  ],
  activate: (
    app: JupyterFrontEnd,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    statusBar: IStatusBar | null,
    notebooks: INotebookTracker | null,
    rendermime: IRenderMimeRegistry | null
  ) => {
    const { commands, shell } = app;
    const service = new MLXService(app.serviceManager.serverSettings);

    // -- the notebook in focus (Activity's "This notebook") ----------------------------------
    if (notebooks) {
      let watched: { pathChanged: any } | null = null;
      const follow = () => {
        service.focus.set({
          notebook: notebooks.currentWidget?.context.path ?? null
        });
      };
      notebooks.currentChanged.connect((_, panel) => {
        watched?.pathChanged.disconnect(follow);
        watched = panel?.context ?? null;
        watched?.pathChanged.connect(follow); // renamed or moved
        follow();
      });
      follow();
    }

    /**
     * "Send to notebook": a code cell below the active cell of the notebook in focus, or in a
     * new notebook when none is open.
     */
    const sendToNotebook = async (code: string): Promise<void> => {
      let panel: NotebookPanel | null = notebooks?.currentWidget ?? null;
      if (!panel) {
        panel = (await commands.execute('notebook:create-new', {
          kernelName: 'python3'
        })) as NotebookPanel;
      }
      await panel.context.ready;
      const notebook = panel.content;
      const only = notebook.widgets.length === 1 ? notebook.widgets[0] : null;
      if (!(only && !only.model.sharedModel.getSource().trim())) {
        NotebookActions.insertBelow(notebook);
      }
      NotebookActions.changeCellType(notebook, 'code');
      notebook.activeCell?.model.sharedModel.setSource(code);
      shell.activateById(panel.id);
      notebook.activeCell?.node.scrollIntoView({ block: 'nearest' });
    };

    const openChat = (model?: string) =>
      commands.execute(CommandIDs.openChat, model ? { model } : {});
    const panel = new MLXPanel(
      service,
      model => void openChat(model),
      sendToNotebook
    );
    shell.add(panel, 'left', { rank: 850 });
    restorer?.add(panel, panel.id);

    const openSection = (section?: SectionId) => {
      if (section && SECTIONS.some(s => s.id === section)) {
        service.openSection(section);
      }
      shell.activateById(panel.id);
    };

    // -- chat panel (one, restored with the layout) ----------------------------------------
    const tracker = new WidgetTracker<ChatPanel>({
      namespace: 'jupyter-mlx-manager-chat'
    });
    let chat: ChatPanel | null = null;
    restorer?.restore(tracker, {
      command: CommandIDs.openChat,
      name: () => 'chat'
    });

    commands.addCommand(CommandIDs.openChat, {
      label: 'MLX: Open Chat',
      caption: 'Chat with a loaded MLX model',
      icon: mlxIcon,
      execute: args => {
        if (!chat || chat.isDisposed) {
          chat = new ChatPanel(service, {
            onOpenSection: openSection,
            rendermime,
            onSendToNotebook: sendToNotebook
          });
          void tracker.add(chat);
          shell.add(chat, 'main');
        }
        const model = typeof args.model === 'string' ? args.model : '';
        if (model) {
          chat.model = model;
        }
        shell.activateById(chat.id);
        return chat;
      }
    });

    commands.addCommand(CommandIDs.open, {
      label: args =>
        args.section ? `MLX: Open ${args.section}` : 'MLX: Open Manager Panel',
      caption: 'Open the MLX Manager sidebar',
      icon: mlxIcon,
      execute: args => openSection(args.section as SectionId | undefined)
    });

    commands.addCommand(CommandIDs.loadModel, {
      label: 'MLX: Load Model…',
      caption: 'Load a local model into the shared pool',
      icon: mlxIcon,
      execute: async args => {
        let model = typeof args.model === 'string' ? args.model : '';
        if (!model) {
          await service.refreshModels();
          const { models, error } = service.models.state;
          const loaded = new Set(service.loadedModels.map(m => m.model));
          const choices = models.map(m => m.id).filter(id => !loaded.has(id));
          if (error) {
            Notification.error(
              `MLX: cannot list local models: ${error.message}`,
              { autoClose: 5000 }
            );
            return;
          }
          if (!choices.length) {
            Notification.info(
              models.length
                ? 'MLX: every local model is loaded already.'
                : 'MLX: no local models yet. Download one first.',
              { autoClose: 5000 }
            );
            return;
          }
          const result = await InputDialog.getItem({
            title: 'Load model',
            label: 'Model',
            items: choices,
            okLabel: 'Load'
          });
          if (!result.button.accept || !result.value) {
            return;
          }
          model = result.value;
        }
        const id = Notification.emit(`Loading ${model}…`, 'in-progress', {
          autoClose: false
        });
        try {
          const loaded = await service.load(
            model,
            typeof args.pin === 'boolean' ? { pin: args.pin } : {}
          );
          Notification.update({
            id,
            message: `${model} is loaded.`,
            type: 'success',
            autoClose: 4000,
            // Only a chat model (text, vision) offers Chat.
            actions: isChatKind(loaded?.kind)
              ? [{ label: 'Chat', callback: () => void openChat(model) }]
              : []
          });
        } catch (err) {
          Notification.update({
            id,
            message: `Could not load ${model}: ${message(err)}`,
            type: 'error',
            autoClose: false
          });
        }
      }
    });

    commands.addCommand(CommandIDs.downloadModel, {
      label: 'MLX: Download Model…',
      caption: 'Download a model from the Hugging Face Hub',
      icon: mlxIcon,
      execute: async args => {
        let repo = typeof args.repo_id === 'string' ? args.repo_id : '';
        if (!repo) {
          const result = await InputDialog.getText({
            title: 'Download model',
            label: 'Hub repository id (org/name)',
            placeholder: 'mlx-community/Qwen2.5-0.5B-Instruct-4bit',
            okLabel: 'Download'
          });
          if (!result.button.accept || !result.value) {
            return;
          }
          repo = result.value.trim();
        }
        if (!REPO_ID.test(repo)) {
          Notification.error(
            `MLX: "${repo}" is not a Hub repo id (org/name).`,
            { autoClose: 5000 }
          );
          return;
        }
        try {
          await service.downloads.start(repo);
          openSection('downloads');
        } catch (err) {
          Notification.error(
            `MLX: could not download ${repo}: ${message(err)}`,
            { autoClose: false }
          );
        }
      }
    });

    if (palette) {
      for (const command of [
        CommandIDs.open,
        CommandIDs.loadModel,
        CommandIDs.downloadModel,
        CommandIDs.openChat
      ]) {
        palette.addItem({ command, category: 'MLX' });
      }
    }

    // -- status bar --------------------------------------------------------------------------
    if (statusBar) {
      statusBar.registerStatusItem('jupyter-mlx-manager:status', {
        item: new MLXStatusItem(service, () => openSection('pool')),
        align: 'left',
        rank: 50
      });
    }

    // -- settings ----------------------------------------------------------------------------
    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            const interval = settings.get('refreshInterval').composite;
            const seconds =
              typeof interval === 'number' && interval >= 0 ? interval : 5;
            panel.refreshInterval = seconds;
            service.refreshInterval = seconds;
            try {
              service.defaultKeepAlive = parseKeepAlive(
                settings.get('defaultKeepAlive').composite as string
              );
            } catch (err) {
              console.warn(
                'jupyter-mlx-manager: ignoring defaultKeepAlive:',
                message(err)
              );
              service.defaultKeepAlive = undefined;
            }
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.warn('jupyter-mlx-manager: could not load settings', reason);
        });
    }

    service.start();
  }
};

/**
 * Inline completion (ghost text) from a loaded model, for JupyterLab's inline completer;
 * its model and max tokens are settings of `jupyter-mlx-manager:plugin`.
 */
const inlinePlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-mlx-manager:inline-completer',
  description:
    'MLX inline completion provider (ghost text from a loaded model).',
  autoStart: true,
  requires: [ICompletionProviderManager],
  optional: [ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    manager: ICompletionProviderManager,
    settingRegistry: ISettingRegistry | null
  ) => {
    const provider = new MLXInlineProvider(app.serviceManager.serverSettings);
    manager.registerInlineProvider(provider);
    if (!settingRegistry) {
      return;
    }
    settingRegistry
      .load(PLUGIN_ID)
      .then(settings => {
        const apply = () => {
          const model = settings.get('inlineCompletionModel').composite;
          const maxTokens = settings.get('inlineCompletionMaxTokens').composite;
          provider.settings = {
            model: typeof model === 'string' ? model.trim() : '',
            maxTokens:
              typeof maxTokens === 'number' && maxTokens > 0
                ? maxTokens
                : DEFAULT_MAX_TOKENS
          };
        };
        apply();
        settings.changed.connect(apply);
      })
      .catch(reason => {
        console.warn(
          'jupyter-mlx-manager: could not load inline completion settings',
          reason
        );
      });
  }
};

export default [plugin, inlinePlugin];
