/**
 * "Open notebook / console on this session": a Jupyter kernel of the server's own kernel manager
 * whose kernel provisioner (DESIGN §6, kernels/provisioner.py) attaches to the session's kernel.
 *
 * Two ways, the first the server offers:
 * - `POST sessions/{ref}/jupyter-kernels` starts such a kernel and answers `{kernel_id}` (or `{id}`);
 *   the notebook or console is then connected to that kernel by id;
 * - a kernelspec whose provisioner config names the session (`config.session` = id or name).
 * A server with neither says so in a dialog.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { KernelSpec } from '@jupyterlab/services';

import { ApiError, SessionsApi } from './api';
import { ISession } from './tokens';

type Spec = KernelSpec.ISpecModel & { metadata?: { [key: string]: unknown } };

interface IProvisionerMeta {
  kernel_provisioner?: { provisioner_name?: string; config?: { session?: string } };
}

/** The kernelspec that attaches to `session`, or null. */
export async function kernelSpecFor(app: JupyterFrontEnd, session: ISession): Promise<string | null> {
  const manager = app.serviceManager.kernelspecs;
  await manager.ready;
  await manager.refreshSpecs();
  const specs = Object.values(manager.specs?.kernelspecs ?? {}).filter(Boolean) as Spec[];
  for (const spec of specs) {
    const target = ((spec.metadata ?? {}) as IProvisionerMeta).kernel_provisioner?.config?.session;
    if (target && (target === session.id || target === session.name)) {
      return spec.name;
    }
  }
  return null;
}

export async function openOnSession(
  app: JupyterFrontEnd,
  api: SessionsApi,
  session: ISession,
  kind: 'notebook' | 'console'
): Promise<void> {
  const route = `sessions/${encodeURIComponent(session.id)}/jupyter-kernels`;
  if (await api.hasRoute('POST', route)) {
    const answer = await api.request<{ kernel_id?: string; id?: string }>('POST', route, {});
    const id = answer.kernel_id ?? answer.id;
    if (!id) {
      throw new ApiError(502, 'The server started a kernel but did not say which.', 'no-kernel');
    }
    try {
      if (kind === 'notebook') {
        const model = await app.commands.execute('docmanager:new-untitled', {
          type: 'notebook',
          path: ''
        });
        await app.commands.execute('docmanager:open', {
          path: model.path,
          factory: 'Notebook',
          kernel: { id }
        });
      } else {
        await app.commands.execute('console:create', { kernelPreference: { id } });
      }
    } catch (error) {
      // Nothing shows the kernel the server started: shut it down (that only detaches it from
      // the session, which keeps running) rather than leave it behind.
      await app.serviceManager.kernels.shutdown(id).catch(() => undefined);
      throw error;
    }
    return;
  }
  const kernelName = await kernelSpecFor(app, session);
  if (!kernelName) {
    throw new ApiError(
      404,
      `This server offers no way to attach a notebook or console to session “${session.name}” ` +
        '(no POST sessions/{ref}/jupyter-kernels route and no kernelspec naming the session). ' +
        'Use the Run view, or a "Python 3 (session: …)" kernel, which makes a session of its own.',
      'missing'
    );
  }
  if (kind === 'notebook') {
    await app.commands.execute('notebook:create-new', { kernelName });
  } else {
    await app.commands.execute('console:create', { kernelPreference: { name: kernelName } });
  }
}
