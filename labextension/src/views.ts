/**
 * The per-session views of the sidebar: info with the status history as a timeline, run code,
 * files, services, logs, commits and usage. Each view checks its route in the server's OpenAPI
 * document first, and says so plainly when the server lacks it.
 */
import { ApiError, RouteMissing, SessionsApi } from './api';
import { errorNote, formatBytes, formatTime, h, reportError, saveBlob } from './dom';
import { SessionEvents } from './events';
import {
  ConsoleItem,
  IExecuteResult,
  IFileEntry,
  IService,
  ISession,
  ITask,
  LIVE_STATUSES
} from './tokens';

export interface IViewContext {
  api: SessionsApi;
  events: SessionEvents;
  settings: { logTail: number; usageInterval: number };
}

/** One tab of the session details. `show` is called on selection and on every status change. */
export abstract class SessionView {
  abstract readonly id: string;
  abstract readonly label: string;
  readonly node: HTMLElement = h('div', { class: 'jp-SessionsView' });

  constructor(protected readonly ctx: IViewContext) {}

  /** Renders for `session`; `changed` is false when only its status moved. */
  abstract show(session: ISession, changed: boolean): Promise<void>;

  /** The view is no longer visible: stop streams and timers. */
  hide(): void {
    // Most views hold nothing open.
  }

  protected get api(): SessionsApi {
    return this.ctx.api;
  }

  protected fill(...children: (Node | string)[]): void {
    this.node.replaceChildren(...children);
  }

  /** For a view of a running session's `GET sessions/{ref}/<route>`: says why it can't show
   * (not running, no such route on this server), or runs `body`. */
  protected async showLive(
    session: ISession,
    what: string,
    route: string,
    body: () => Promise<void>
  ): Promise<void> {
    if (!LIVE_STATUSES.has(session.status)) {
      this.fill(notLive(session, what));
      return;
    }
    await this.guard(async () => {
      await this.api.requireRoute('GET', `sessions/${session.id}/${route}`, route);
      await body();
    });
  }

  /** Runs `body`, or shows why not (missing route, the server's message) in place of the view. */
  protected async guard(body: () => Promise<void>): Promise<void> {
    try {
      await body();
    } catch (error) {
      this.fill(errorNote(error));
    }
  }
}

function notLive(session: ISession, what: string): HTMLElement {
  return h(
    'div',
    { class: 'jp-SessionsPanel-note' },
    `${what} needs a running session; this one is ${session.status}.`
  );
}

const ref = (session: ISession): string => session.id;

export class InfoView extends SessionView {
  readonly id = 'info';
  readonly label = 'Info';

  async show(session: ISession): Promise<void> {
    const rows: [string, string][] = [
      ['Id', session.id],
      ['Status', session.status + (session.status_info ? ` — ${session.status_info}` : '')],
      ['Image', session.image],
      ['Type', session.type],
      [
        'Resources',
        Object.entries(session.resources)
          .map(([k, v]) => `${k}: ${k === 'mem' && typeof v === 'number' ? formatBytes(v) : v}`)
          .join(', ')
      ],
      ['Created', formatTime(session.created_at)],
      ['Kernels', session.kernels.map(k => `${k.name} ${k.status} on ${k.agent ?? '–'}`).join('; ')]
    ];
    if (session.tag) {
      rows.push(['Tag', session.tag]);
    }
    if (session.result && session.result !== 'UNDEFINED') {
      rows.push(['Result', `${session.result} (exit code ${session.exit_code ?? '–'})`]);
    }
    const table = h(
      'table',
      { class: 'jp-SessionsInfo' },
      ...rows.map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v)))
    );
    const timeline = h('ol', { class: 'jp-SessionsTimeline' });
    this.fill(table, h('h4', {}, 'Status history'), timeline);
    await this.guard(async () => {
      const { history } = await this.api.statusHistory(ref(session));
      timeline.replaceChildren(
        ...history.map(entry =>
          h(
            'li',
            { class: 'jp-SessionsTimeline-entry', 'data-status': entry.to },
            h('span', { class: `jp-SessionsStatus jp-mod-${entry.to.toLowerCase()}` }, entry.to),
            h('time', { datetime: entry.at }, formatTime(entry.at)),
            entry.reason ? h('span', { class: 'jp-SessionsTimeline-reason' }, entry.reason) : null
          )
        )
      );
    });
  }
}

/** Runs code in the session's main kernel through `execute` (query mode, continued until done). */
export class RunView extends SessionView {
  readonly id = 'run';
  readonly label = 'Run';
  private _code = h('textarea', {
    class: 'jp-SessionsRun-code',
    rows: 4,
    spellcheck: false,
    placeholder: 'Python code, run in the session’s kernel (Shift+Enter)'
  });
  private _output = h('div', { class: 'jp-SessionsRun-output' });
  private _button = h('button', { class: 'jp-mod-styled jp-mod-accept' }, 'Run');
  private _session: ISession | null = null;

  constructor(ctx: IViewContext) {
    super(ctx);
    this._button.addEventListener('click', () => void this.run());
    this._code.addEventListener('keydown', event => {
      if (event.key === 'Enter' && event.shiftKey) {
        event.preventDefault();
        void this.run();
      }
    });
  }

  async show(session: ISession, changed: boolean): Promise<void> {
    this._session = session;
    if (!LIVE_STATUSES.has(session.status)) {
      this.fill(notLive(session, 'Running code'));
      return;
    }
    if (changed || !this.node.contains(this._code)) {
      this._output.replaceChildren();
      this.fill(this._code, h('div', { class: 'jp-SessionsRun-bar' }, this._button), this._output);
    }
  }

  async run(): Promise<void> {
    const session = this._session;
    if (!session) {
      return;
    }
    this._button.disabled = true;
    this._output.replaceChildren();
    this._output.dataset.state = 'running';
    try {
      let result: IExecuteResult = await this.api.execute(ref(session), {
        mode: 'query',
        code: this._code.value
      });
      this.render(result.console);
      while (result.status === 'continued') {
        result = await this.api.execute(ref(session), {
          mode: 'continue',
          code: '',
          run_id: result.run_id
        });
        this.render(result.console);
      }
      if (result.status === 'waiting-input') {
        this._output.append(h('div', { class: 'jp-SessionsPanel-note' }, 'The code asks for input: use a console for that.'));
      }
      this._output.dataset.state = result.exit_code ? 'failed' : 'done';
    } catch (error) {
      this._output.dataset.state = 'failed';
      if (error instanceof RouteMissing) {
        this._output.append(errorNote(error));
      } else {
        await reportError('Could not run the code', error);
      }
    } finally {
      this._button.disabled = false;
    }
  }

  private render(items: ConsoleItem[]): void {
    for (const [kind, data] of items) {
      if (kind === 'media' && data && typeof data === 'object') {
        const bundle = data as { [mime: string]: string };
        if (bundle['image/png']) {
          this._output.append(h('img', { src: `data:image/png;base64,${bundle['image/png']}` }));
        } else {
          this._output.append(h('pre', { class: 'jp-SessionsRun-media' }, bundle['text/plain'] ?? ''));
        }
      } else {
        this._output.append(h('pre', { class: `jp-SessionsRun-${kind}` }, String(data)));
      }
    }
  }
}

/** Browse the work directory; upload (button or drag and drop); download a file or an archive. */
export class FilesView extends SessionView {
  readonly id = 'files';
  readonly label = 'Files';
  private _path = '';
  private _session: ISession | null = null;

  constructor(ctx: IViewContext) {
    super(ctx);
    this.node.addEventListener('dragover', event => {
      if (this._session && event.dataTransfer?.types.includes('Files')) {
        event.preventDefault();
        this.node.classList.add('jp-mod-dropTarget');
      }
    });
    this.node.addEventListener('dragleave', () => this.node.classList.remove('jp-mod-dropTarget'));
    this.node.addEventListener('drop', event => {
      this.node.classList.remove('jp-mod-dropTarget');
      const files = Array.from(event.dataTransfer?.files ?? []);
      if (files.length) {
        event.preventDefault();
        void this.upload(files);
      }
    });
  }

  async show(session: ISession, changed: boolean): Promise<void> {
    if (changed) {
      this._path = '';
    }
    this._session = session;
    await this.showLive(session, 'Browsing files', 'files', () => this.list());
  }

  private async list(): Promise<void> {
    const session = this._session!;
    const listing = await this.api.listFiles(ref(session), this._path);
    const picker = h('input', { type: 'file', multiple: true, class: 'jp-SessionsFiles-input' });
    picker.addEventListener('change', () => void this.upload(Array.from(picker.files ?? [])));
    const selected = new Set<string>();
    const archive = h('button', { class: 'jp-mod-styled', disabled: true }, 'Download selected (zip)');
    archive.addEventListener('click', () => void this.archive([...selected]));
    const crumbs = h('div', { class: 'jp-SessionsFiles-path' }, this.crumbs());
    const rows = listing.files
      .slice()
      .sort((a, b) => (a.type === 'dir' ? 0 : 1) - (b.type === 'dir' ? 0 : 1) || a.name.localeCompare(b.name))
      .map(entry => this.row(entry, selected, archive));
    this.fill(
      h(
        'div',
        { class: 'jp-SessionsFiles-bar' },
        h('label', { class: 'jp-mod-styled jp-SessionsFiles-upload' }, 'Upload…', picker),
        archive
      ),
      crumbs,
      h('ul', { class: 'jp-SessionsFiles-list' }, ...rows),
      h('div', { class: 'jp-SessionsPanel-note' }, 'Drop files here to upload them into this folder.')
    );
  }

  private crumbs(): string {
    return '/home/work' + (this._path ? `/${this._path}` : '');
  }

  private row(entry: IFileEntry, selected: Set<string>, archive: HTMLButtonElement): HTMLElement {
    const path = this._path ? `${this._path}/${entry.name}` : entry.name;
    const check = h('input', { type: 'checkbox', 'aria-label': `select ${entry.name}` });
    check.addEventListener('change', () => {
      if (check.checked) {
        selected.add(path);
      } else {
        selected.delete(path);
      }
      archive.disabled = selected.size === 0;
    });
    const name =
      entry.type === 'dir'
        ? h('a', { class: 'jp-SessionsFiles-dir', href: '#' }, entry.name + '/')
        : h('span', { class: 'jp-SessionsFiles-name' }, entry.name);
    if (entry.type === 'dir') {
      name.addEventListener('click', event => {
        event.preventDefault();
        this._path = path;
        void this.guard(() => this.list());
      });
    }
    const download =
      entry.type === 'dir'
        ? null
        : h('button', { class: 'jp-mod-styled jp-SessionsFiles-download', title: `Download ${entry.name}` }, 'Download');
    download?.addEventListener('click', () => void this.download(path, entry.name));
    return h(
      'li',
      { class: 'jp-SessionsFiles-entry', 'data-name': entry.name, 'data-type': entry.type },
      check,
      name,
      h('span', { class: 'jp-SessionsFiles-size' }, entry.type === 'dir' ? '' : formatBytes(entry.size)),
      download
    );
  }

  private async upload(files: File[]): Promise<void> {
    const session = this._session;
    if (!session || !files.length) {
      return;
    }
    try {
      await this.api.uploadFiles(
        ref(session),
        this._path,
        files.map(file => ({ relativePath: file.webkitRelativePath || file.name, file }))
      );
      await this.list();
    } catch (error) {
      await reportError('Upload failed', error);
    }
  }

  private async download(path: string, name: string): Promise<void> {
    try {
      saveBlob(await this.api.downloadFile(ref(this._session!), path), name);
    } catch (error) {
      await reportError('Download failed', error);
    }
  }

  private async archive(paths: string[]): Promise<void> {
    try {
      const blob = await this.api.downloadArchive(ref(this._session!), paths, 'zip');
      saveBlob(blob, `${this._session!.name}.zip`);
    } catch (error) {
      await reportError('Download failed', error);
    }
  }
}

/** The session's services: start, stop, and open through the proxy in a new tab. */
export class ServicesView extends SessionView {
  readonly id = 'services';
  readonly label = 'Services';
  private _session: ISession | null = null;

  constructor(ctx: IViewContext) {
    super(ctx);
    ctx.events.serviceStatus.connect((_, event) => {
      if (this._session?.id === event.session_id && this.node.isConnected) {
        void this.guard(() => this.list());
      }
    });
  }

  async show(session: ISession): Promise<void> {
    this._session = session;
    await this.showLive(session, 'Services', 'services', () => this.list());
  }

  private async list(): Promise<void> {
    const { services } = await this.api.listServices(ref(this._session!));
    this.fill(
      h(
        'ul',
        { class: 'jp-SessionsServices-list' },
        ...services.map(service => this.row(service))
      )
    );
  }

  private row(service: IService): HTMLElement {
    const running = service.status === 'running';
    const open = h('button', { class: 'jp-mod-styled jp-mod-accept' }, running ? 'Open' : 'Start and open');
    open.addEventListener('click', () => void this.open(service));
    const stop = h('button', { class: 'jp-mod-styled', disabled: !running }, 'Stop');
    stop.addEventListener('click', () => void this.stop(service));
    return h(
      'li',
      { class: 'jp-SessionsServices-entry', 'data-name': service.name, 'data-status': service.status },
      h('span', { class: 'jp-SessionsServices-name' }, service.name),
      h('span', { class: 'jp-SessionsServices-meta' }, `${service.protocol}:${service.port} ${service.status}`),
      open,
      stop
    );
  }

  private async open(service: IService): Promise<void> {
    // The tab is opened now, inside the click, so that no pop-up blocker stops it; it is sent to
    // the proxy once the server answers with the (token-carrying) URL.
    const tab = window.open('about:blank', '_blank');
    try {
      const started = await this.api.startService(ref(this._session!), service.name);
      const url = started.url;
      if (!url) {
        throw new ApiError(502, `The server started ${service.name} but gave no URL to open.`, 'no-url');
      }
      if (tab) {
        // The proxied app is untrusted (its own origin): it gets no handle on this window.
        tab.opener = null;
        tab.location.href = url;
      } else {
        window.open(url, '_blank', 'noopener');
      }
      await this.list();
    } catch (error) {
      tab?.close();
      await reportError(`Could not open ${service.name}`, error);
    }
  }

  private async stop(service: IService): Promise<void> {
    try {
      await this.api.stopService(ref(this._session!), service.name);
      await this.list();
    } catch (error) {
      await reportError(`Could not stop ${service.name}`, error);
    }
  }
}

/** The main kernel's output: a live tail when the server can follow, else the last lines. */
export class LogsView extends SessionView {
  readonly id = 'logs';
  readonly label = 'Logs';
  private _pre = h('pre', { class: 'jp-SessionsLogs' });
  private _state = h('div', { class: 'jp-SessionsPanel-note' });
  private _abort: AbortController | null = null;
  private _shown: string | null = null;

  async show(session: ISession): Promise<void> {
    // A status change of the session shown keeps its stream open.
    if (this._shown === session.id && this._abort) {
      return;
    }
    this.hide();
    this._shown = session.id;
    const refresh = h('button', { class: 'jp-mod-styled' }, 'Refresh');
    refresh.addEventListener('click', () => {
      this.hide();
      void this.show(session);
    });
    this._pre.textContent = '';
    this.fill(h('div', { class: 'jp-SessionsLogs-bar' }, this._state, refresh), this._pre);
    await this.guard(async () => {
      const path = `sessions/${session.id}/logs`;
      await this.api.requireRoute('GET', path, 'logs');
      const tail = this.ctx.settings.logTail;
      const live = LIVE_STATUSES.has(session.status);
      if (live && (await this.api.hasParameter('GET', path, 'follow'))) {
        await this.follow(session, tail);
      } else {
        this._pre.textContent = await this.api.logs(ref(session), tail);
        this._state.textContent = live
          ? `Last ${tail} lines (this server cannot follow logs live: Refresh for more).`
          : `Last ${tail} lines.`;
        this.scroll();
      }
    });
  }

  hide(): void {
    this._abort?.abort();
    this._abort = null;
    this._shown = null;
  }

  private async follow(session: ISession, tail: number): Promise<void> {
    const abort = new AbortController();
    this._abort = abort;
    this._state.textContent = 'Following live…';
    const response = await this.api.fetch(
      'GET',
      `sessions/${session.id}/logs`,
      { signal: abort.signal },
      { tail, follow: 'true' }
    );
    const reader = response.body?.getReader();
    if (!reader) {
      this._pre.textContent = await response.text();
      return;
    }
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          break;
        }
        this._pre.append(decoder.decode(value, { stream: true }));
        this.scroll();
      }
      this._state.textContent = 'The log ended.';
    } catch (error) {
      if (!abort.signal.aborted) {
        this._state.textContent = `The log stream broke: ${String(error)}`;
      }
    } finally {
      if (this._abort === abort) {
        this._abort = null;
      }
    }
  }

  private scroll(): void {
    this._pre.scrollTop = this._pre.scrollHeight;
  }
}

/** Commits and conversions to images: a progress bar per background task (from events). */
export class CommitsView extends SessionView {
  readonly id = 'commits';
  readonly label = 'Commits';
  private _tasks = new Map<string, ITask>();
  private _list = h('ul', { class: 'jp-SessionsCommits-list' });
  private _session: ISession | null = null;

  constructor(ctx: IViewContext) {
    super(ctx);
    ctx.events.taskProgress.connect((_, event) => {
      const task = this._tasks.get(event.task_id);
      if (task) {
        this.update({ ...task, status: event.status, progress: event.progress });
      }
    });
  }

  async show(session: ISession, changed: boolean): Promise<void> {
    this._session = session;
    if (changed) {
      this._list.replaceChildren();
      this._tasks.clear();
    }
    await this.guard(async () => {
      await this.api.requireRoute('POST', `sessions/${session.id}/commit`, 'commit');
      this.fill(
        h('div', { class: 'jp-SessionsPanel-note' }, 'Commit or convert this session with the actions above.'),
        this._list
      );
    });
  }

  /** Follows a task the panel started; events move it, and a slow re-read covers missed ones. */
  track(task: ITask): void {
    this.update(task);
    const poll = async (): Promise<void> => {
      const known = this._tasks.get(task.id);
      if (!known || ['done', 'failed', 'cancelled'].includes(known.status)) {
        return;
      }
      try {
        this.update(await this.api.task(task.id));
      } catch (error) {
        if (error instanceof ApiError && error.status === 404) {
          return;
        }
      }
      window.setTimeout(() => void poll(), 2000);
    };
    window.setTimeout(() => void poll(), 2000);
  }

  private update(task: ITask): void {
    this._tasks.set(task.id, task);
    const total = task.progress?.total ?? 0;
    const current = task.progress?.current ?? 0;
    const bar = h('progress', total ? { max: total, value: current } : {});
    if (task.status === 'done') {
      bar.setAttribute('max', '1');
      bar.setAttribute('value', '1');
    }
    const item = h(
      'li',
      { class: 'jp-SessionsCommits-entry', 'data-task': task.id, 'data-status': task.status },
      h('span', {}, `${task.kind} ${task.status}`),
      bar,
      h('span', {}, task.error ?? task.progress?.message ?? '')
    );
    const old = this._list.querySelector(`[data-task="${task.id}"]`);
    if (old) {
      old.replaceWith(item);
    } else {
      this._list.prepend(item);
    }
    if (this._session && !this.node.contains(this._list)) {
      this.fill(this._list);
    }
  }
}

/** CPU and memory over time as sparklines, sampled while the view is shown. */
export class UsageView extends SessionView {
  readonly id = 'usage';
  readonly label = 'Usage';
  private _timer = 0;
  private _samples: { at: number; cpu: number; mem: number; limit: number | null }[] = [];
  private _session: string | null = null;

  async show(session: ISession): Promise<void> {
    if (this._session !== session.id) {
      this._samples = [];
      this._session = session.id;
    }
    window.clearInterval(this._timer);
    await this.showLive(session, 'Usage', 'usage', async () => {
      await this.sample(session);
      this._timer = window.setInterval(
        () => void this.sample(session).catch(error => this.fill(errorNote(error))),
        this.ctx.settings.usageInterval * 1000
      );
    });
  }

  hide(): void {
    window.clearInterval(this._timer);
  }

  private async sample(session: ISession): Promise<void> {
    const usage = await this.api.usage(ref(session));
    const main = usage.kernels.find(k => k.name === 'main1') ?? usage.kernels[0];
    if (main?.usage) {
      this._samples.push({
        at: Date.parse(main.measured_at) || Date.now(),
        cpu: main.usage.cpu_seconds,
        mem: main.usage.mem_bytes,
        limit: main.usage.mem_limit
      });
      this._samples = this._samples.slice(-60);
    }
    const cpu: number[] = [];
    for (let i = 1; i < this._samples.length; i++) {
      const a = this._samples[i - 1];
      const b = this._samples[i];
      const seconds = Math.max((b.at - a.at) / 1000, 0.001);
      cpu.push(Math.max(0, (b.cpu - a.cpu) / seconds));
    }
    const last = this._samples[this._samples.length - 1];
    this.fill(
      h('div', { class: 'jp-SessionsUsage-title' }, `CPU (cores): ${cpu.length ? cpu[cpu.length - 1].toFixed(2) : '–'}`),
      sparkline(cpu),
      h(
        'div',
        { class: 'jp-SessionsUsage-title' },
        `Memory: ${formatBytes(last?.mem)}${last?.limit ? ` of ${formatBytes(last.limit)}` : ''}`
      ),
      sparkline(this._samples.map(s => s.mem), last?.limit ?? undefined),
      h('div', { class: 'jp-SessionsPanel-note' }, `Sampled every ${this.ctx.settings.usageInterval} s while shown.`)
    );
  }
}

/** A small SVG line of `values` (scaled to `max`, else to their own maximum). */
export function sparkline(values: number[], max?: number): SVGSVGElement {
  const width = 200;
  const height = 32;
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('class', 'jp-SessionsSparkline');
  const top = max ?? Math.max(...values, 1e-9);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const points = values
    .map((v, i) => `${(i * step).toFixed(1)},${(height - (v / top) * (height - 2) - 1).toFixed(1)}`)
    .join(' ');
  const line = document.createElementNS(ns, 'polyline');
  line.setAttribute('points', points);
  svg.append(line);
  return svg;
}
