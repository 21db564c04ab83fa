/**
 * The REST client of the panel: every call to `{base_url}jupyter-sessions/api/` goes through here,
 * with Jupyter's own credentials (ServerConnection adds the token or XSRF header).
 *
 * Errors become `ApiError` carrying the server's `{message, reason}`; the panel shows them in a
 * JupyterLab dialog. Which routes exist is read from the server's OpenAPI document, so a view whose
 * route the server lacks says so instead of failing on a 404.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import {
  ICreateFromTemplateRequest,
  ICreateSessionRequest,
  IErrorBody,
  IExecuteRequest,
  IExecuteResult,
  IFileList,
  IImageList,
  IOpenAPI,
  IOperation,
  IServiceList,
  IServiceStart,
  ISession,
  ISessionList,
  IStatusHistory,
  ITask,
  ITemplateList,
  IUploadResult,
  IUsage
} from './tokens';

export const API_PATH = 'jupyter-sessions/api';

/** An error answered by the server (or the network), with the server's own message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly reason: string
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** A view's route is not on this server (the feature has not landed or is switched off). */
export class RouteMissing extends ApiError {
  constructor(readonly route: string) {
    super(404, `This server has no ${route} route: the feature is not available here.`, 'missing');
    this.name = 'RouteMissing';
  }
}

type Query = { [key: string]: string | number | boolean | undefined | null };

function encodeQuery(query?: Query): string {
  if (!query) {
    return '';
  }
  const parts: string[] = [];
  for (const [key, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== '') {
      parts.push(`${encodeURIComponent(key)}=${encodeURIComponent(String(value))}`);
    }
  }
  return parts.length ? `?${parts.join('&')}` : '';
}

const seg = (ref: string): string => encodeURIComponent(ref);

/** A route template of the OpenAPI document, e.g. `/sessions/{ref}/files`, matched to a path. */
function templateToRegExp(template: string): RegExp {
  const body = template
    .split(/(\{[^}]+\})/)
    .map(part => (part.startsWith('{') ? '[^/]+' : part.replace(/[.*+?^$()|[\]\\]/g, '\\$&')))
    .join('');
  return new RegExp(`^${body}$`);
}

export class SessionsApi {
  readonly settings: ServerConnection.ISettings;
  private _routes: Promise<Map<RegExp, { [method: string]: IOperation }>> | null = null;

  constructor(settings?: ServerConnection.ISettings) {
    this.settings = settings ?? ServerConnection.makeSettings();
  }

  /** The absolute URL of an API path (`sessions/x/logs`) with its query. */
  url(path: string, query?: Query): string {
    return URLExt.join(this.settings.baseUrl, API_PATH, path) + encodeQuery(query);
  }

  /** The OpenAPI operation of `method path` (path relative to the API), or null. */
  async operation(method: string, path: string): Promise<IOperation | null> {
    if (!this._routes) {
      this._routes = this.request<IOpenAPI>('GET', 'openapi.json').then(doc => {
        const routes = new Map<RegExp, { [method: string]: IOperation }>();
        for (const [template, ops] of Object.entries(doc.paths ?? {})) {
          const byMethod: { [method: string]: IOperation } = {};
          for (const [m, op] of Object.entries(ops)) {
            byMethod[m.toUpperCase()] = (op ?? {}) as IOperation;
          }
          routes.set(templateToRegExp(template), byMethod);
        }
        return routes;
      });
      this._routes.catch(() => {
        this._routes = null;
      });
    }
    const routes = await this._routes;
    const wanted = '/' + path.replace(/^\/+/, '').split('?')[0];
    for (const [pattern, methods] of routes) {
      const op = methods[method.toUpperCase()];
      if (op && pattern.test(wanted)) {
        return op;
      }
    }
    return null;
  }

  /** Whether the server declares `method path`. */
  async hasRoute(method: string, path: string): Promise<boolean> {
    return (await this.operation(method, path)) !== null;
  }

  /** Whether `method path` takes the query parameter `name` (e.g. logs' `follow`). */
  async hasParameter(method: string, path: string, name: string): Promise<boolean> {
    const op = await this.operation(method, path);
    return !!op?.parameters?.some(p => p.name === name);
  }

  /** Throws RouteMissing when the server lacks the route (`label` names it for the user). */
  async requireRoute(method: string, path: string, label: string): Promise<void> {
    if (!(await this.hasRoute(method, path))) {
      throw new RouteMissing(`${label} (${method} ${path.replace(/^sessions\/[^/]+/, 'sessions/{ref}')})`);
    }
  }

  /** A raw response (streams, blobs); errors still become ApiError. */
  async fetch(method: string, path: string, init: RequestInit = {}, query?: Query): Promise<Response> {
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(
        this.url(path, query),
        { ...init, method },
        this.settings
      );
    } catch (error) {
      throw new ApiError(0, `The server did not answer: ${String(error)}`, 'network');
    }
    if (!response.ok) {
      throw await errorOf(response);
    }
    return response;
  }

  /** A JSON call; `body` is sent as JSON. */
  async request<T>(method: string, path: string, body?: unknown, query?: Query): Promise<T> {
    const init: RequestInit = {};
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { 'Content-Type': 'application/json' };
    }
    const response = await this.fetch(method, path, init, query);
    const text = await response.text();
    return (text ? JSON.parse(text) : null) as T;
  }

  listSessions(query?: Query): Promise<ISessionList> {
    return this.request<ISessionList>('GET', 'sessions', undefined, query);
  }

  getSession(ref: string): Promise<ISession> {
    return this.request<ISession>('GET', `sessions/${seg(ref)}`);
  }

  createSession(body: ICreateSessionRequest): Promise<ISession> {
    return this.request<ISession>('POST', 'sessions', body);
  }

  createFromTemplate(body: ICreateFromTemplateRequest): Promise<ISession> {
    return this.request<ISession>('POST', 'sessions/from-template', body);
  }

  renameSession(ref: string, name: string): Promise<ISession> {
    return this.request<ISession>('POST', `sessions/${seg(ref)}/rename`, { name });
  }

  restartSession(ref: string): Promise<ISession> {
    return this.request<ISession>('POST', `sessions/${seg(ref)}/restart`, {});
  }

  destroySession(ref: string, forced = false): Promise<ISession> {
    return this.request<ISession>('DELETE', `sessions/${seg(ref)}`, undefined, {
      forced: forced ? 'true' : undefined
    });
  }

  statusHistory(ref: string): Promise<IStatusHistory> {
    return this.request<IStatusHistory>('GET', `sessions/${seg(ref)}/status-history`);
  }

  usage(ref: string): Promise<IUsage> {
    return this.request<IUsage>('GET', `sessions/${seg(ref)}/usage`);
  }

  async logs(ref: string, tail: number, kernel = 'main1'): Promise<string> {
    const response = await this.fetch('GET', `sessions/${seg(ref)}/logs`, {}, { tail, kernel });
    return response.text();
  }

  execute(ref: string, body: IExecuteRequest): Promise<IExecuteResult> {
    return this.request<IExecuteResult>('POST', `sessions/${seg(ref)}/execute`, body);
  }

  listImages(): Promise<IImageList> {
    return this.request<IImageList>('GET', 'images');
  }

  listTemplates(): Promise<ITemplateList> {
    return this.request<ITemplateList>('GET', 'templates');
  }

  listFiles(ref: string, path: string, hidden = false): Promise<IFileList> {
    return this.request<IFileList>('GET', `sessions/${seg(ref)}/files`, undefined, {
      path,
      hidden: hidden ? 'true' : undefined
    });
  }

  /** Multipart upload: each part's filename is its path relative to `path`. */
  uploadFiles(
    ref: string,
    path: string,
    files: { relativePath: string; file: Blob }[]
  ): Promise<IUploadResult> {
    const form = new FormData();
    for (const { relativePath, file } of files) {
      form.append('file', file, relativePath);
    }
    return this.fetch('POST', `sessions/${seg(ref)}/files`, { body: form }, { path }).then(
      async r => (await r.json()) as IUploadResult
    );
  }

  async downloadFile(ref: string, path: string): Promise<Blob> {
    const response = await this.fetch('GET', `sessions/${seg(ref)}/files/content`, {}, { path });
    return response.blob();
  }

  async downloadArchive(ref: string, paths: string[], format: 'tar' | 'zip'): Promise<Blob> {
    const response = await this.fetch('POST', `sessions/${seg(ref)}/files/archive`, {
      body: JSON.stringify({ paths, format }),
      headers: { 'Content-Type': 'application/json' }
    });
    return response.blob();
  }

  listServices(ref: string): Promise<IServiceList> {
    return this.request<IServiceList>('GET', `sessions/${seg(ref)}/services`);
  }

  startService(ref: string, service: string): Promise<IServiceStart> {
    return this.request<IServiceStart>(
      'POST',
      `sessions/${seg(ref)}/services/${seg(service)}/start`,
      {}
    );
  }

  stopService(ref: string, service: string): Promise<unknown> {
    return this.request<unknown>(
      'POST',
      `sessions/${seg(ref)}/services/${seg(service)}/shutdown`,
      {}
    );
  }

  commit(ref: string): Promise<ITask> {
    return this.request<ITask>('POST', `sessions/${seg(ref)}/commit`, {});
  }

  convertToImage(ref: string, imageName: string): Promise<ITask> {
    return this.request<ITask>('POST', `sessions/${seg(ref)}/convert-to-image`, {
      image_name: imageName
    });
  }

  task(id: string): Promise<ITask> {
    return this.request<ITask>('GET', `tasks/${seg(id)}`);
  }

  /** The URL of the owner-filtered SSE stream (EventSource sends the login cookie). */
  eventsUrl(query?: Query): string {
    const token = this.settings.token;
    return this.url('events', { ...query, token: token || undefined });
  }
}

/** The server's `{message, reason}` of a failed response (or a plain description). */
export async function errorOf(response: Response): Promise<ApiError> {
  let message = `${response.status} ${response.statusText}`;
  let reason = 'error';
  try {
    const body = (await response.json()) as Partial<IErrorBody>;
    if (body && typeof body.message === 'string') {
      message = body.message;
      reason = body.reason ?? reason;
    }
  } catch {
    // Not JSON (a proxy's page): the status line is all there is.
  }
  return new ApiError(response.status, message, reason);
}
