/**
 * Live updates for the panel: the owner-filtered SSE stream `GET events` (DESIGN §4, §6).
 *
 * Statuses arrive as `session_status` events, commit progress as `task_progress` and services'
 * states as `service_status`, so the panel
 * never polls the session list. A server without the events route gets a slow fallback instead:
 * a re-read every few seconds, and only while some session is in a transitional status.
 */
import { ISignal, Signal } from '@lumino/signaling';

import { SessionsApi } from './api';
import { IServiceStatusEvent, ISessionStatusEvent, ITaskProgressEvent } from './tokens';

export type EventMode = 'connecting' | 'live' | 'fallback' | 'closed';

export class SessionEvents {
  constructor(private readonly api: SessionsApi) {}

  get statusChanged(): ISignal<this, ISessionStatusEvent> {
    return this._status;
  }

  get taskProgress(): ISignal<this, ITaskProgressEvent> {
    return this._task;
  }

  get serviceStatus(): ISignal<this, IServiceStatusEvent> {
    return this._service;
  }

  get modeChanged(): ISignal<this, EventMode> {
    return this._modeChanged;
  }

  get mode(): EventMode {
    return this._mode;
  }

  /** Opens the stream when the server has it, else switches to the fallback. */
  async start(): Promise<void> {
    let available = false;
    try {
      available = await this.api.hasRoute('GET', 'events');
    } catch {
      available = false;
    }
    if (!available || typeof EventSource === 'undefined') {
      this.setMode('fallback');
      return;
    }
    this.open();
  }

  dispose(): void {
    this._source?.close();
    this._source = null;
    if (this._retry) {
      window.clearTimeout(this._retry);
    }
    this.setMode('closed');
    Signal.clearData(this);
  }

  private open(): void {
    this.setMode('connecting');
    const source = new EventSource(this.api.eventsUrl(), { withCredentials: true });
    this._source = source;
    source.addEventListener('open', () => this.setMode('live'));
    source.addEventListener('session_status', event => {
      const data = parse<ISessionStatusEvent>(event);
      if (data) {
        this._status.emit(data);
      }
    });
    source.addEventListener('task_progress', event => {
      const data = parse<ITaskProgressEvent>(event);
      if (data) {
        this._task.emit(data);
      }
    });
    source.addEventListener('service_status', event => {
      const data = parse<IServiceStatusEvent>(event);
      if (data) {
        this._service.emit(data);
      }
    });
    source.addEventListener('error', () => {
      // EventSource reconnects on its own after a dropped connection; a refused one (closed) is
      // retried here, slowly, and the panel re-reads everything on reconnect.
      if (source.readyState === EventSource.CLOSED) {
        this._source = null;
        this.setMode('connecting');
        this._retry = window.setTimeout(() => this.open(), 5000);
      }
    });
  }

  private setMode(mode: EventMode): void {
    if (mode !== this._mode) {
      this._mode = mode;
      this._modeChanged.emit(mode);
    }
  }

  private _mode: EventMode = 'closed';
  private _source: EventSource | null = null;
  private _retry = 0;
  private _status = new Signal<this, ISessionStatusEvent>(this);
  private _task = new Signal<this, ITaskProgressEvent>(this);
  private _service = new Signal<this, IServiceStatusEvent>(this);
  private _modeChanged = new Signal<this, EventMode>(this);
}

function parse<T>(event: Event): T | null {
  try {
    return JSON.parse((event as MessageEvent<string>).data) as T;
  } catch {
    return null;
  }
}
