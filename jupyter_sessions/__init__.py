"""jupyter_sessions: managed compute sessions (containers hosting Jupyter kernels) for Jupyter.

The Jupyter Server extension lives in ``app.py``; this module only names the extension points.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import SessionsApp

    return [{"module": "jupyter_sessions", "app": SessionsApp}]
