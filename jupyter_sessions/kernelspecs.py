"""Kernelspecs generated for session kernels: one for the default image, one per other allowed
image, one per template the server's owner can use.

Decision: a kernelspec *directory* written at start-up, not a KernelSpecManager subclass. A
subclass would need ``c.ServerApp.kernel_spec_manager_class`` (one class per server, which other
extensions also want) and would be invisible to every other process. A directory is what
Jupyter itself reads: the server's KernelSpecManager gets it added to its ``kernel_dirs`` (so
``/api/kernelspecs``, JupyterLab's launcher and gateway clients list the specs), and another
process (nbclient, ``jupyter console``) sees them with ``<jupyter data dir>/jupyter_sessions`` on
``JUPYTER_PATH``. Each spec names the ``jupyter-sessions`` provisioner (kernels/provisioner.py)
with its image or template; the specs carry no secret. Specs of images or templates no longer
offered are removed at the next start.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .kernels.provisioner import PROVISIONER_NAME

#: Every generated kernelspec's name starts with this (and nothing else in the folder does).
PREFIX = "jsess-"
DEFAULT_NAME = f"{PREFIX}default"


def kernels_dir(data_dir: str | Path) -> Path:
    """``<data dir>/jupyter_sessions/kernels``: put its parent on JUPYTER_PATH to use them."""
    return Path(data_dir) / "jupyter_sessions" / "kernels"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")[:60] or "x"


def kernelspec(display_name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """A kernel.json whose kernel is started by the provisioner (``argv`` is never run)."""
    return {
        "argv": [],
        "display_name": display_name,
        "language": "python",
        # SIGINT reaches the provisioner, which maps it to the session's interrupt.
        "interrupt_mode": "signal",
        "metadata": {
            "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME, "config": dict(config)},
            "jupyter_sessions": {"generated": True},
        },
    }


def build_kernelspecs(
    default_image: str, images: Iterable[str], templates: Iterable[tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    """Kernelspecs by name: the default image, the other ``images``, ``(id, name)`` templates."""
    specs = {DEFAULT_NAME: kernelspec(f"Python 3 (session: {default_image})", {})}
    for image in images:
        if image != default_image:
            specs[f"{PREFIX}{_slug(image)}"] = kernelspec(
                f"Python 3 (session: {image})", {"image": image}
            )
    for template_id, name in templates:
        specs[f"{PREFIX}template-{_slug(name)[:40]}-{_slug(template_id)[:8]}"] = kernelspec(
            f"Python 3 (session template: {name})", {"template": template_id}
        )
    return specs


def write_kernelspecs(directory: Path, specs: Mapping[str, Mapping[str, Any]]) -> None:
    """Write the specs (blocking: call it in a thread) and remove generated ones not in them."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob(f"{PREFIX}*"):
        if old.name not in specs and (old / "kernel.json").is_file():
            shutil.rmtree(old, ignore_errors=True)
    for name, spec in specs.items():
        folder = directory / name
        folder.mkdir(exist_ok=True)
        path = folder / "kernel.json"
        text = json.dumps(spec, indent=1, sort_keys=True)
        if not path.is_file() or path.read_text() != text:
            tmp = folder / "kernel.json.tmp"
            tmp.write_text(text)
            tmp.replace(path)


def register_kernel_dir(app: Any, data_dir: str | Path) -> Path:
    """Let the server's KernelSpecManager read the generated specs (at load, before any
    request: the folder is read on every listing, so specs written later show up)."""
    directory = kernels_dir(data_dir)
    manager = app.serverapp.kernel_spec_manager
    if str(directory) not in manager.kernel_dirs:
        manager.kernel_dirs.append(str(directory))
    return directory


async def install_kernelspecs(app: Any, data_dir: str | Path) -> None:
    """Generate the specs for ``app`` (a SessionsApp starting up); a failure is logged, never
    raised: kernelspecs are a convenience, the API works without them."""
    import asyncio

    from .actions.templates import ListTemplatesAction

    try:
        owner = app.identity.owner
        templates = await app.processors.list_templates.wait_for_complete(
            ListTemplatesAction(caller=owner)
        )
        usable = [
            (t.id, t.name) for t in templates if t.shared or t.owner_access_key == owner.access_key
        ]
        config = app.service.config
        specs = build_kernelspecs(config.default_image, config.allowed_images, usable)
        directory = register_kernel_dir(app, data_dir)
        await asyncio.to_thread(write_kernelspecs, directory, specs)
    except Exception:
        app.log.exception("jupyter_sessions: could not write the session kernelspecs")
        return
    app.log.info("jupyter_sessions: %d session kernelspecs in %s", len(specs), directory)
