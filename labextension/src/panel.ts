/**
 * The left sidebar panel: the caller's sessions with live status, a create button, the actions of
 * the selected session and its views (info, run, files, services, logs, commits, usage).
 *
 * The list is read once and then moved by `session_status` events (see events.ts): a changed
 * session is re-read alone. Actions go through commands (index.ts), so the palette has them too.
 */
import { CommandRegistry } from '@lumino/commands';
import { Widget } from '@lumino/widgets';

import { ApiError, SessionsApi } from './api';
import { errorNote, h } from './dom';
import { EventMode, SessionEvents } from './events';
import { FINAL_STATUSES, ISession, ISessionStatusEvent } from './tokens';
import {
  CommitsView,
  FilesView,
  InfoView,
  IViewContext,
  LogsView,
  RunView,
  ServicesView,
  SessionView,
  UsageView
} from './views';

/** Statuses a session leaves on its own (the fallback re-reads while one is shown). */
const TRANSITIONAL = new Set([
  'PENDING',
  'SCHEDULED',
  'PREPARING',
  'PULLING',
  'PREPARED',
  'CREATING',
  'RESTARTING',
  'TERMINATING'
]);

/** Command ids (index.ts registers them; the panel's buttons call them). */
export const CommandIDs = {
  create: 'jupyter-sessions:create',
  refresh: 'jupyter-sessions:refresh',
  rename: 'jupyter-sessions:rename',
  restart: 'jupyter-sessions:restart',
  destroy: 'jupyter-sessions:destroy',
  commit: 'jupyter-sessions:commit',
  convert: 'jupyter-sessions:convert-to-image',
  openNotebook: 'jupyter-sessions:open-notebook',
  openConsole: 'jupyter-sessions:open-console',
  show: 'jupyter-sessions:show-panel'
};

export class SessionsPanel extends Widget {
  constructor(
    readonly api: SessionsApi,
    readonly events: SessionEvents,
    private readonly commands: CommandRegistry,
    settings: IViewContext['settings']
  ) {
    super();
    this.id = 'jupyter-sessions-panel';
    this.addClass('jp-SessionsPanel');
    this.title.caption = 'Compute sessions';
    const ctx: IViewContext = { api, events, settings };
    this.commits = new CommitsView(ctx);
    this._views = [
      new InfoView(ctx),
      new RunView(ctx),
      new FilesView(ctx),
      new ServicesView(ctx),
      new LogsView(ctx),
      this.commits,
      new UsageView(ctx)
    ];
    this._active = this._views[0];

    const button = (label: string, command: string, title: string): HTMLButtonElement => {
      const node = h('button', { class: 'jp-mod-styled', title, 'data-command': command }, label);
      node.addEventListener('click', () => void this.commands.execute(command));
      return node;
    };
    this.node.append(
      h(
        'header',
        { class: 'jp-SessionsPanel-header' },
        h('h3', {}, 'Compute sessions'),
        h(
          'div',
          { class: 'jp-SessionsPanel-toolbar' },
          button('New session', CommandIDs.create, 'Create a compute session'),
          button('Refresh', CommandIDs.refresh, 'Read the sessions again'),
          this._mode
        )
      ),
      this._list,
      this._details
    );
    events.statusChanged.connect((_, event) => void this.onStatus(event));
    events.modeChanged.connect((_, mode) => this.onMode(mode));
    this.onMode(events.mode);
  }

  readonly commits: CommitsView;

  /** The selected session, or null. */
  get selected(): ISession | null {
    return this._selected ? (this._sessions.get(this._selected) ?? null) : null;
  }

  /** Reads the whole list again (start-up, reconnect, the Refresh button). */
  async refresh(): Promise<void> {
    try {
      const { sessions } = await this.api.listSessions({ limit: 200 });
      this._sessions = new Map(sessions.map(s => [s.id, s]));
      this._listError = null;
    } catch (error) {
      this._listError = error;
    }
    this.renderList();
    await this.renderDetails(false);
  }

  /** Puts a session the panel just created or changed into the list and selects it. */
  async upsert(session: ISession, select = false): Promise<void> {
    this._sessions.set(session.id, session);
    if (select) {
      this._selected = session.id;
    }
    this.renderList();
    await this.renderDetails(select);
    this.schedulePoll();
  }

  dispose(): void {
    window.clearTimeout(this._poll);
    this._active.hide();
    super.dispose();
  }

  private async onStatus(event: ISessionStatusEvent): Promise<void> {
    try {
      const session = await this.api.getSession(event.session_id);
      this._sessions.set(session.id, session);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        this._sessions.delete(event.session_id);
      } else {
        return;
      }
    }
    this.renderList();
    if (event.session_id === this._selected) {
      await this.renderDetails(false);
    }
  }

  private onMode(mode: EventMode): void {
    const text: { [key in EventMode]: string } = {
      connecting: 'connecting…',
      live: '● live',
      fallback: 'no events route: re-reading while sessions change',
      closed: ''
    };
    this._mode.textContent = text[mode];
    this._mode.dataset.mode = mode;
    if (mode === 'live') {
      void this.refresh();
    }
    this.schedulePoll();
  }

  /** Without events, re-read only while some session is on its way somewhere. */
  private schedulePoll(): void {
    window.clearTimeout(this._poll);
    if (this.events.mode !== 'fallback') {
      return;
    }
    const moving = [...this._sessions.values()].some(s => TRANSITIONAL.has(s.status));
    if (moving) {
      this._poll = window.setTimeout(() => void this.refresh().then(() => this.schedulePoll()), 2000);
    }
  }

  private renderList(): void {
    const visible = [...this._sessions.values()]
      .filter(s => !FINAL_STATUSES.has(s.status) || s.id === this._selected)
      .sort((a, b) => b.created_at.localeCompare(a.created_at));
    const items = visible.map(session => {
      const item = h(
        'li',
        {
          class: 'jp-SessionsPanel-item' + (session.id === this._selected ? ' jp-mod-selected' : ''),
          'data-session-id': session.id,
          'data-session-name': session.name,
          'data-status': session.status,
          title: session.status_info ?? session.status
        },
        h('span', { class: 'jp-SessionsPanel-name' }, session.name),
        h('span', { class: `jp-SessionsStatus jp-mod-${session.status.toLowerCase()}` }, session.status),
        h('span', { class: 'jp-SessionsPanel-image' }, session.image)
      );
      item.addEventListener('click', () => {
        this._selected = session.id;
        this.renderList();
        void this.renderDetails(true);
      });
      return item;
    });
    const empty = this._listError
      ? errorNote(this._listError)
      : h('li', { class: 'jp-SessionsPanel-empty' }, 'No sessions yet: create one with “New session”.');
    this._list.replaceChildren(...(items.length ? items : [empty]));
  }

  private async renderDetails(changed: boolean): Promise<void> {
    const session = this.selected;
    if (!session) {
      this._active.hide();
      this._details.replaceChildren();
      return;
    }
    const action = (label: string, command: string): HTMLButtonElement => {
      const node = h('button', { class: 'jp-mod-styled', 'data-command': command }, label);
      node.disabled = !this.commands.isEnabled(command);
      node.addEventListener('click', () => void this.commands.execute(command));
      return node;
    };
    const tabs = this._views.map(view => {
      const tab = h(
        'button',
        {
          class: 'jp-SessionsTab' + (view === this._active ? ' jp-mod-active' : ''),
          'data-view': view.id,
          role: 'tab'
        },
        view.label
      );
      tab.addEventListener('click', () => {
        if (view !== this._active) {
          this._active.hide();
          this._active = view;
          void this.renderDetails(false);
        }
      });
      return tab;
    });
    if (changed || !this._details.firstChild) {
      // A new selection starts at the same tab; views reset what belonged to the old session.
      this._active.hide();
    }
    this._details.replaceChildren(
      h(
        'div',
        { class: 'jp-SessionsDetails-title' },
        h('strong', {}, session.name),
        h('span', { class: `jp-SessionsStatus jp-mod-${session.status.toLowerCase()}` }, session.status)
      ),
      h(
        'div',
        { class: 'jp-SessionsDetails-actions' },
        action('Rename', CommandIDs.rename),
        action('Restart', CommandIDs.restart),
        action('Destroy', CommandIDs.destroy),
        action('Commit', CommandIDs.commit),
        action('To image', CommandIDs.convert),
        action('Notebook', CommandIDs.openNotebook),
        action('Console', CommandIDs.openConsole)
      ),
      h('div', { class: 'jp-SessionsTabs', role: 'tablist' }, ...tabs),
      this._active.node
    );
    try {
      await this._active.show(session, changed);
    } catch (error) {
      this._active.node.replaceChildren(errorNote(error));
    }
    this.commands.notifyCommandChanged();
  }

  private _sessions = new Map<string, ISession>();
  private _selected: string | null = null;
  private _listError: unknown = null;
  private _views: SessionView[];
  private _active: SessionView;
  private _poll = 0;
  private _mode = h('span', { class: 'jp-SessionsPanel-mode' });
  private _list = h('ul', { class: 'jp-SessionsPanel-list' });
  private _details = h('section', { class: 'jp-SessionsDetails' });
}
