"""jupyter_sessions: managed compute sessions (containers hosting Jupyter kernels) for Jupyter.

The Jupyter Server extension lives in ``app.py``; this module only names the extension points.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import SessionsApp

    return [{"module": "jupyter_sessions", "app": SessionsApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """The JupyterLab panel, built from labextension/ into ``labextension/`` of this package
    (`jupyter labextension develop` links it; wheels install it under share/jupyter)."""
    return [{"src": "labextension", "dest": "jupyter-sessions"}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_sessions``: the session magics (magics.py)."""
    from .magics import load_ipython_extension as load

    load(ipython)
