"""Notebook widgets for sessions, built from stock ipywidgets (no front-end code of ours).

``SessionsWidget()`` shows the caller's sessions with live status, a create form, and for the
selected session its files, services, logs and commits. Every model is plain ipywidgets state,
so tests drive the widget through its models without a browser.
"""

from __future__ import annotations

from .sessions import CreateForm, SessionDetail, SessionsWidget

__all__ = ["CreateForm", "SessionDetail", "SessionsWidget"]
