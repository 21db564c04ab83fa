/**
 * The JupyterLab plugin of jupyter_sessions: the sessions sidebar, its commands (also in the
 * palette) and its settings. Server: `{base_url}jupyter-sessions/api/` (DESIGN §4, §6).
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { SessionsApi } from './api';
import { askCreate, askText, confirm } from './dialogs';
import { reportError } from './dom';
import { SessionEvents } from './events';
import { openOnSession } from './kernels';
import { CommandIDs, SessionsPanel } from './panel';
import { FINAL_STATUSES, ISession, LIVE_STATUSES } from './tokens';

const PLUGIN_ID = 'jupyter-sessions:plugin';

export const sessionsIcon = new LabIcon({
  name: 'jupyter-sessions:sessions',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<path d="M3 4h18v5H3zm2 2v1h2V6zm-2 5h18v5H3zm2 2v1h2v-1zm-2 5h18v3H3z"/></g></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Managed compute sessions (containers hosting Jupyter kernels) in the left sidebar.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette, ISettingRegistry],
  activate: async (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null
  ): Promise<void> => {
    const settings = { logTail: 200, usageInterval: 5 };
    const defaults = { cpu: 1, mem: '1g' };
    if (settingRegistry) {
      try {
        const loaded = await settingRegistry.load(PLUGIN_ID);
        const apply = (): void => {
          settings.logTail = loaded.get('logTail').composite as number;
          settings.usageInterval = loaded.get('usageInterval').composite as number;
          defaults.cpu = loaded.get('defaultCpu').composite as number;
          defaults.mem = loaded.get('defaultMemory').composite as string;
        };
        apply();
        loaded.changed.connect(apply);
      } catch (error) {
        console.warn('jupyter-sessions: settings not loaded, using defaults', error);
      }
    }

    const api = new SessionsApi(app.serviceManager.serverSettings);
    const events = new SessionEvents(api);
    const panel = new SessionsPanel(api, events, app.commands, settings);
    panel.title.icon = sessionsIcon;
    app.shell.add(panel, 'left', { rank: 600 });
    restorer?.add(panel, 'jupyter-sessions-panel');

    const selected = (): ISession | null => panel.selected;
    const isLive = (): boolean => !!selected() && LIVE_STATUSES.has(selected()!.status);
    const notFinal = (): boolean => !!selected() && !FINAL_STATUSES.has(selected()!.status);

    /** Runs an action on the selected session; a failure is a dialog with the server's message. */
    const act =
      (title: string, body: (session: ISession) => Promise<void>) => async (): Promise<void> => {
        const session = selected();
        if (!session) {
          return;
        }
        try {
          await body(session);
        } catch (error) {
          await reportError(title, error);
        }
      };

    app.commands.addCommand(CommandIDs.show, {
      label: 'Show Compute Sessions',
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.create, {
      label: 'New Compute Session…',
      execute: async () => {
        try {
          const request = await askCreate(api, defaults);
          if (!request) {
            return;
          }
          const session =
            request.kind === 'template'
              ? await api.createFromTemplate({ ...request.body, enqueue_only: true })
              : await api.createSession(request.body);
          await panel.upsert(session, true);
        } catch (error) {
          await reportError('Could not create the session', error);
        }
      }
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Refresh Compute Sessions',
      execute: () => panel.refresh()
    });
    app.commands.addCommand(CommandIDs.rename, {
      label: 'Rename Compute Session…',
      isEnabled: notFinal,
      execute: act('Could not rename the session', async session => {
        const name = await askText('Rename session', 'New name', session.name);
        if (name && name !== session.name) {
          await panel.upsert(await api.renameSession(session.id, name));
        }
      })
    });
    app.commands.addCommand(CommandIDs.restart, {
      label: 'Restart Compute Session',
      isEnabled: () => !!selected() && selected()!.status !== 'RESTARTING',
      execute: act('Could not restart the session', async session => {
        await panel.upsert(await api.restartSession(session.id), true);
      })
    });
    app.commands.addCommand(CommandIDs.destroy, {
      label: 'Destroy Compute Session…',
      isEnabled: notFinal,
      execute: act('Could not destroy the session', async session => {
        const ok = await confirm(
          'Destroy session',
          `Destroy “${session.name}”? Its container and its work directory are removed.`,
          'Destroy'
        );
        if (ok) {
          await panel.upsert(await api.destroySession(session.id));
        }
      })
    });
    app.commands.addCommand(CommandIDs.commit, {
      label: 'Commit Compute Session',
      isEnabled: isLive,
      execute: act('Could not commit the session', async session => {
        await api.requireRoute('POST', `sessions/${session.id}/commit`, 'commit');
        panel.commits.track(await api.commit(session.id));
      })
    });
    app.commands.addCommand(CommandIDs.convert, {
      label: 'Convert Compute Session to Image…',
      isEnabled: isLive,
      execute: act('Could not convert the session', async session => {
        await api.requireRoute('POST', `sessions/${session.id}/convert-to-image`, 'convert to image');
        const name = await askText('Convert to image', 'Image name', session.name);
        if (name) {
          panel.commits.track(await api.convertToImage(session.id, name));
        }
      })
    });
    app.commands.addCommand(CommandIDs.openNotebook, {
      label: 'Open Notebook on Compute Session',
      isEnabled: isLive,
      execute: act('Could not open a notebook', session => openOnSession(app, api, session, 'notebook'))
    });
    app.commands.addCommand(CommandIDs.openConsole, {
      label: 'Open Console on Compute Session',
      isEnabled: isLive,
      execute: act('Could not open a console', session => openOnSession(app, api, session, 'console'))
    });

    if (palette) {
      const category = 'Compute Sessions';
      for (const command of Object.values(CommandIDs)) {
        palette.addItem({ command, category });
      }
    }

    await panel.refresh();
    void events.start();
  }
};

export default plugin;
