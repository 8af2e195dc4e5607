import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { mlxIcon } from './icon';
import { MLXPanel } from './panel';

const PLUGIN_ID = 'jupyter-mlx-manager:plugin';

namespace CommandIDs {
  export const open = 'jupyter-mlx-manager:open';
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'MLX Manager: local MLX models in the JupyterLab sidebar.',
  autoStart: true,
  optional: [ISettingRegistry, ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const panel = new MLXPanel(app.serviceManager.serverSettings);
    app.shell.add(panel, 'left', { rank: 850 });
    restorer?.add(panel, panel.id);

    app.commands.addCommand(CommandIDs.open, {
      label: 'MLX: Open Manager Panel',
      icon: mlxIcon,
      execute: () => app.shell.activateById(panel.id)
    });
    palette?.addItem({ command: CommandIDs.open, category: 'MLX' });

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            const value = settings.get('refreshInterval').composite;
            panel.refreshInterval = typeof value === 'number' ? value : 5;
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.warn('jupyter-mlx-manager: could not load settings', reason);
        });
    }
  }
};

export default plugin;
