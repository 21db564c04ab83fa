/**
 * The server's JSON shapes (DESIGN §4), mirrored for the panel.
 *
 * Every interface here is what a route under `{base_url}jupyter-sessions/api/` answers (or takes);
 * keep them in step with `jupyter_sessions/serialize.py` and the OpenAPI document.
 */

/** Session statuses, upper case as the server sends them. */
export type SessionStatus =
  | 'PENDING'
  | 'SCHEDULED'
  | 'PREPARING'
  | 'PULLING'
  | 'PREPARED'
  | 'CREATING'
  | 'RUNNING'
  | 'RESTARTING'
  | 'RUNNING_DEGRADED'
  | 'TERMINATING'
  | 'TERMINATED'
  | 'ERROR'
  | 'CANCELLED';

/** Statuses after which nothing changes any more. */
export const FINAL_STATUSES: ReadonlySet<string> = new Set(['TERMINATED', 'CANCELLED']);

/** Statuses in which a session's kernel answers (execute, files, services, logs). */
export const LIVE_STATUSES: ReadonlySet<string> = new Set(['RUNNING', 'RUNNING_DEGRADED']);

export type SessionType = 'interactive' | 'batch';

/** `{"cpu": 2, "mem": "4g", "cuda.device": 1}` in requests; the server answers mem in bytes. */
export type ResourceSlot = { [slot: string]: number | string };

export interface IKernel {
  name: string;
  role?: string;
  status: SessionStatus;
  agent: string | null;
  container_id: string | null;
}

export interface ISession {
  id: string;
  name: string;
  status: SessionStatus;
  status_info: string | null;
  status_changed_at?: string | null;
  result: 'UNDEFINED' | 'SUCCESS' | 'FAILURE' | string;
  exit_code: number | null;
  image: string;
  type: SessionType;
  cluster_mode?: string;
  cluster_size?: number;
  scaling_group?: string;
  resources: ResourceSlot;
  owner_access_key: string;
  created_at: string;
  terminated_at: string | null;
  kernels: IKernel[];
  tag: string | null;
  priority?: number;
  idle_timeout?: number | null;
  restarted_from: string | null;
  depends_on: string[];
}

export interface ISessionList {
  sessions: ISession[];
  total: number;
}

/** `POST sessions`: the fields the create dialog sets (the server takes more). */
export interface ICreateSessionRequest {
  name?: string;
  image?: string;
  resources?: ResourceSlot;
  type?: SessionType;
  startup_command?: string;
  enqueue_only?: boolean;
  max_wait_seconds?: number;
}

/** `POST sessions/from-template`: a template id plus parameter values and overrides. */
export interface ICreateFromTemplateRequest {
  template_id: string;
  params?: { [name: string]: unknown };
  name?: string;
  enqueue_only?: boolean;
}

export interface ITemplate {
  id: string;
  name: string;
  description?: string | null;
  params?: { [name: string]: { type: string; default?: unknown } };
}

export interface ITemplateList {
  templates: ITemplate[];
  total: number;
}

export interface IImage {
  name: string;
  present: boolean;
  is_default: boolean;
  agents: string[];
  size: number | null;
  labels: { [key: string]: string };
}

export interface IImageList {
  images: IImage[];
  total: number;
}

export interface IHistoryEntry {
  kernel: string | null;
  from: SessionStatus | null;
  to: SessionStatus;
  reason: string | null;
  at: string;
}

export interface IStatusHistory {
  session_id: string;
  history: IHistoryEntry[];
}

export interface IKernelUsage {
  name: string;
  status: SessionStatus;
  measured_at: string;
  usage: {
    cpu_seconds: number;
    mem_bytes: number;
    mem_limit: number | null;
    pids: number;
  } | null;
}

export interface IUsage {
  session_id: string;
  kernels: IKernelUsage[];
}

/** One console item: `[type, data]` (stdout/stderr/log text, media a mime bundle, html). */
export type ConsoleItem = [string, unknown];

export interface IExecuteRequest {
  mode: 'query' | 'batch' | 'input' | 'continue';
  code: string;
  run_id?: string;
  options?: { [key: string]: unknown };
}

export interface IExecuteResult {
  run_id: string;
  status:
    | 'finished'
    | 'continued'
    | 'waiting-input'
    | 'build-finished'
    | 'clean-finished'
    | 'exec-timeout';
  exit_code: number | null;
  console: ConsoleItem[];
  options: { [key: string]: unknown } | null;
  files?: unknown[];
}

export interface IFileEntry {
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'other';
  size: number;
  mode: string;
  mtime: string;
  owner?: string;
  target?: string;
}

export interface IFileList {
  /** Absolute: `/home/work/...`. */
  path: string;
  files: IFileEntry[];
  storage?: { quota: number | null; used: number | null; measured_at: string | null };
}

export interface IUploadResult {
  files: { path: string; size: number; status: string }[];
}

/** A service of the session's image or of the server's config (status: starting, running, dead,
 * stopped). */
export interface IService {
  name: string;
  protocol: string;
  port: number;
  source?: string;
  description?: string | null;
  status: string;
  healthy?: boolean;
  started_at?: string | null;
  exit_code?: number | null;
}

export interface IServiceList {
  services: IService[];
  total: number;
}

/** What `start_service` answers: the URL (on the service's own origin) carries a short token. */
export interface IServiceStart {
  service: IService;
  url: string;
}

export interface ITaskProgress {
  current: number;
  total: number | null;
  message: string | null;
}

export interface ITask {
  id: string;
  kind: string;
  session_id?: string | null;
  status: 'pending' | 'running' | 'done' | 'failed' | 'cancelled';
  progress: ITaskProgress;
  result: unknown;
  error: string | null;
}

/** SSE `event: session_status`. */
export interface ISessionStatusEvent {
  session_id: string;
  status: SessionStatus;
  reason: string | null;
  at: string;
}

/** SSE `event: service_status` (statuses: starting, running, dead, stopped). */
export interface IServiceStatusEvent {
  session_id: string;
  service: string;
  status: string;
  reason: string;
  at: string;
}

/** SSE `event: task_progress`. */
export interface ITaskProgressEvent {
  task_id: string;
  kind?: string;
  session_id?: string;
  status: ITask['status'];
  progress: ITaskProgress;
}

/** Errors: `{"message", "reason"}` with the status of the server's error tree. */
export interface IErrorBody {
  message: string;
  reason: string;
  details?: unknown;
}

/** The OpenAPI document, as far as the panel reads it (which routes exist). */
export interface IOpenAPI {
  paths: { [path: string]: { [method: string]: unknown } };
}

/** One operation of the OpenAPI document (its query parameters tell what a route takes). */
export interface IOperation {
  operationId?: string;
  summary?: string;
  parameters?: { name: string; in: string }[];
}
