/**
 * The create dialog (image or template, resources, type, name) and the small prompts of the
 * session actions (rename, convert to image), as JupyterLab dialogs.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { SessionsApi } from './api';
import { h } from './dom';
import { ICreateFromTemplateRequest, ICreateSessionRequest, IImage, ITemplate } from './tokens';

export type CreateRequest =
  | { kind: 'params'; body: ICreateSessionRequest }
  | { kind: 'template'; body: ICreateFromTemplateRequest };

export interface ICreateDefaults {
  cpu: number;
  mem: string;
}

/** The form of the create dialog; `getValue` builds the request body. */
class CreateForm extends Widget implements Dialog.IBodyWidget<CreateRequest> {
  constructor(images: IImage[], templates: ITemplate[], defaults: ICreateDefaults) {
    super();
    this.addClass('jp-SessionsCreate');
    const imageOptions = images.map(image =>
      h(
        'option',
        { value: image.name, selected: image.is_default },
        image.name + (image.is_default ? ' (default)' : '')
      )
    );
    this._image = h('select', { name: 'image' }, h('option', { value: '' }, 'server default'), ...imageOptions);
    this._template = h(
      'select',
      { name: 'template' },
      h('option', { value: '' }, 'none: use the fields below'),
      ...templates.map(t => h('option', { value: t.id }, t.name))
    );
    this._name = h('input', { name: 'name', type: 'text', placeholder: 'generated when empty' });
    this._cpu = h('input', { name: 'cpu', type: 'number', min: 0.1, step: 0.1, value: defaults.cpu });
    this._mem = h('input', { name: 'mem', type: 'text', value: defaults.mem });
    this._type = h(
      'select',
      { name: 'type' },
      h('option', { value: 'interactive' }, 'interactive'),
      h('option', { value: 'batch' }, 'batch')
    );
    this._command = h('input', { name: 'startup_command', type: 'text', placeholder: 'batch only' });
    const row = (label: string, field: HTMLElement): HTMLElement =>
      h('label', { class: 'jp-SessionsCreate-row' }, h('span', {}, label), field);
    this.node.append(
      row('Name', this._name),
      row('Template', this._template),
      row('Image', this._image),
      row('CPU cores', this._cpu),
      row('Memory', this._mem),
      row('Type', this._type),
      row('Command', this._command)
    );
  }

  getValue(): CreateRequest {
    const name = this._name.value.trim() || undefined;
    if (this._template.value) {
      return { kind: 'template', body: { template_id: this._template.value, name } };
    }
    const body: ICreateSessionRequest = {
      name,
      image: this._image.value || undefined,
      resources: { cpu: Number(this._cpu.value), mem: this._mem.value.trim() },
      type: this._type.value as ICreateSessionRequest['type'],
      enqueue_only: true
    };
    if (body.type === 'batch') {
      body.startup_command = this._command.value;
    }
    return { kind: 'params', body };
  }

  private _name: HTMLInputElement;
  private _template: HTMLSelectElement;
  private _image: HTMLSelectElement;
  private _cpu: HTMLInputElement;
  private _mem: HTMLInputElement;
  private _type: HTMLSelectElement;
  private _command: HTMLInputElement;
}

/** Asks for a new session; null when cancelled. Images and templates are read from the server. */
export async function askCreate(api: SessionsApi, defaults: ICreateDefaults): Promise<CreateRequest | null> {
  const [images, templates] = await Promise.all([
    api.listImages().then(
      r => r.images,
      () => [] as IImage[]
    ),
    api.listTemplates().then(
      r => r.templates,
      () => [] as ITemplate[]
    )
  ]);
  const result = await showDialog({
    title: 'New compute session',
    body: new CreateForm(images, templates, defaults),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Create' })]
  });
  return result.button.accept ? result.value : null;
}

/** Asks for one line of text (a new name, an image name); null when cancelled or empty. */
export async function askText(title: string, label: string, value = ''): Promise<string | null> {
  const body = new Widget();
  body.addClass('jp-SessionsPrompt');
  const input = h('input', { type: 'text', value, 'aria-label': label });
  body.node.append(h('label', {}, h('span', {}, label), input));
  const result = await showDialog({
    title,
    body,
    focusNodeSelector: 'input',
    buttons: [Dialog.cancelButton(), Dialog.okButton()]
  });
  const text = input.value.trim();
  return result.button.accept && text ? text : null;
}

/** Asks to confirm a destructive action. */
export async function confirm(title: string, message: string, label: string): Promise<boolean> {
  const result = await showDialog({
    title,
    body: message,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label })]
  });
  return result.button.accept;
}
