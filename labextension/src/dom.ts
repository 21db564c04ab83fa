/**
 * Small DOM helpers shared by the views (the panel is plain DOM in Lumino widgets: no framework to
 * load or build), and the one place that turns an error into a JupyterLab dialog.
 */
import { showErrorMessage } from '@jupyterlab/apputils';

import { ApiError, RouteMissing } from './api';

type Child = Node | string | null | undefined | false;
type Attrs = { [key: string]: string | number | boolean | EventListener | undefined };

/** `h('button', {class: 'x', onclick: f}, 'Label')`. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) {
      continue;
    }
    if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      node.className = String(value);
    } else {
      node.setAttribute(key, value === true ? '' : String(value));
    }
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child);
    }
  }
  return node;
}

/** Shows a failure as a JupyterLab dialog with the server's message. */
export async function reportError(title: string, error: unknown): Promise<void> {
  console.warn(title, error);
  const message = error instanceof Error ? error.message : String(error);
  await showErrorMessage(title, { message });
}

/** The note a view shows in place of its content when the server lacks its route. */
export function missingNote(error: RouteMissing): HTMLElement {
  return h('div', { class: 'jp-SessionsPanel-missing' }, error.message);
}

/** Renders an error inside a view (missing route, or the server's message). */
export function errorNote(error: unknown): HTMLElement {
  if (error instanceof RouteMissing) {
    return missingNote(error);
  }
  const message = error instanceof ApiError || error instanceof Error ? error.message : String(error);
  return h('div', { class: 'jp-SessionsPanel-error' }, message);
}

/** Bytes in binary units, as the server's `mem` strings read. */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined) {
    return '–';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

/** An ISO time in the reader's locale. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) {
    return '–';
  }
  const date = new Date(iso);
  return isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/** Saves a blob under a file name through the browser's download. */
export function saveBlob(blob: Blob, name: string): void {
  const url = URL.createObjectURL(blob);
  const anchor = h('a', { href: url, download: name, style: 'display: none' });
  document.body.append(anchor);
  anchor.click();
  anchor.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 30_000);
}
