"""The default kernel image's recipe, as plain data, and the tag derived from it.

This module owns *what* goes into the image (Debian suite, apt packages, pinned Python packages,
user, labels, environment, command); `builder` owns *how* it is built. The image is tagged by a
hash of this data, so the default image and the allowlist follow the recipe: change anything
here (or `BUILDER_VERSION`) and every host rebuilds. Keep it stable.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

#: Bumped when the builder changes what it produces from the same recipe (it is hashed too).
BUILDER_VERSION = "1"

#: Where images built from a recipe are stored in the Docker engine.
IMAGE_REPOSITORY = "jupyter-sessions/kernel"

#: Label names shared with the rest of the package (the Docker agent reads them).
LABEL_RECIPE = "org.jupyter.sessions.recipe"
LABEL_KERNELSPEC = "org.jupyter.sessions.kernelspec"
LABEL_SERVICES = "org.jupyter.sessions.services"

#: Where the image's CMD expects the kernel connection file (the container's own /tmp); the
#: Docker agent writes it there, owned by the user, mode 0600, before starting the container.
CONNECTION_FILE = "/tmp/connection.json"  # noqa: S108

#: A service as declared in the services label: name, protocol, port and a command whose
#: `{port}` and `{base_url}` placeholders are filled in when the service is started.
Service = dict[str, Any]


def _jupyter_server_command(app: str, *options: str) -> list[str]:
    """``jupyter <app>`` for the proxy: all interfaces, the proxy's base URL, no token of its
    own (the proxy authenticates), any origin (the proxy gives it one of its own)."""
    return [
        "jupyter",
        app,
        "--ip=0.0.0.0",
        "--port={port}",
        "--no-browser",
        "--ServerApp.base_url={base_url}",
        "--IdentityProvider.token=",
        "--ServerApp.allow_origin=*",
        *options,
    ]


JUPYTER_SERVICE: Service = {
    "name": "jupyter",
    "protocol": "http",
    "port": 8888,
    "command": _jupyter_server_command("lab"),
}

#: A shell in the session: Jupyter Notebook's terminal page (xterm.js over terminado), opened on
#: terminal "1" of its own server, the same shell a JupyterLab terminal gets.
TERMINAL_SERVICE: Service = {
    "name": "terminal",
    "protocol": "http",
    "port": 8890,
    "command": _jupyter_server_command("notebook", "--JupyterNotebookApp.default_url=/terminals/1"),
    "description": "a shell in the session (a terminal page)",
}


def _default_services() -> list[Service]:
    return [dict(s, command=list(s["command"])) for s in (JUPYTER_SERVICE, TERMINAL_SERVICE)]


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the image's content; hashed into its tag."""

    suite: str = "bookworm"
    variant: str = "minbase"
    mirror: str = "http://deb.debian.org/debian"
    #: sources.list lines for the apt step (the main suite plus updates and security fixes,
    #: like Debian's own container images).
    apt_sources: tuple[str, ...] = (
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    )
    apt_packages: tuple[str, ...] = (
        "python3",
        "python3-venv",
        "procps",
        "ca-certificates",
        "python3-pip",
    )
    #: The suite's Python (`python3` in bookworm) for which wheels are chosen.
    python_version: str = "3.11"
    #: The suite's glibc: the newest manylinux_2_N wheels the image can load.
    glibc_version: tuple[int, int] = (2, 36)
    #: Top-level packages, pinned; their dependencies are resolved once per wheel cache.
    python_packages: tuple[str, ...] = (
        "ipykernel==7.4.0",
        "ipywidgets==8.1.9",
        "jupyterlab==4.6.6",
        # The terminal service's page (7.6 is the line built for JupyterLab 4.6).
        "notebook==7.6.5",
        "numpy==2.4.6",
        "pandas==3.1.1",
        "matplotlib==3.11.2",
    )
    user: str = "work"
    uid: int = 1000
    gid: int = 1000
    home: str = "/home/work"
    shell: str = "/bin/bash"
    kernelspec: str = "python3"
    kernelspec_prefix: str = "/usr/local"
    env: tuple[tuple[str, str], ...] = (
        ("HOME", "/home/work"),
        ("LANG", "C.UTF-8"),
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        # Terminals (jupyter_server_terminals) fall back to `sh` without it.
        ("SHELL", "/bin/bash"),
    )
    cmd: tuple[str, ...] = ("python3", "-m", "ipykernel_launcher", "-f", CONNECTION_FILE)
    services: list[Service] = field(default_factory=_default_services)
    #: Static labels; the recipe hash, kernelspec and services labels are added by `image_labels`.
    labels: tuple[tuple[str, str], ...] = (
        ("org.opencontainers.image.title", "jupyter-sessions default kernel image"),
    )
    repository: str = IMAGE_REPOSITORY

    def to_json(self) -> dict[str, Any]:
        """The recipe as JSON-ready data (tuples become lists)."""
        data: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(self)))
        return data

    @property
    def kernelspec_dir(self) -> str:
        """Where the kernelspec lives inside the image."""
        return f"{self.kernelspec_prefix}/share/jupyter/kernels/{self.kernelspec}"


DEFAULT_RECIPE = Recipe()


def canonical_json(data: Any) -> str:
    """Stable JSON (sorted keys, no whitespace) so equal data always hashes alike."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def recipe_hash(recipe: Recipe = DEFAULT_RECIPE) -> str:
    """sha256 hex digest of the recipe and the builder version."""
    payload = {"builder_version": BUILDER_VERSION, "recipe": recipe.to_json()}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def image_tag(recipe: Recipe = DEFAULT_RECIPE) -> str:
    """The image reference for a recipe, e.g. `jupyter-sessions/kernel:0123456789ab`."""
    return f"{recipe.repository}:{recipe_hash(recipe)[:12]}"


def services_json(recipe: Recipe = DEFAULT_RECIPE) -> str:
    """The services label value: a JSON list of service dicts."""
    return canonical_json(recipe.services)


def image_labels(recipe: Recipe = DEFAULT_RECIPE) -> dict[str, str]:
    """All labels the built image carries."""
    labels = dict(recipe.labels)
    labels[LABEL_RECIPE] = recipe_hash(recipe)
    labels[LABEL_KERNELSPEC] = recipe.kernelspec
    labels[LABEL_SERVICES] = services_json(recipe)
    return labels
