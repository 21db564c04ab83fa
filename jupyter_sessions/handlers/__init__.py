"""The REST routes, all under ``{base_url}jupyter-sessions/api/`` (see DESIGN §4)."""

from __future__ import annotations

from .accounts import account_handlers
from .base import API_PREFIX, REF
from .execute import (
    CompleteHandler,
    ExecuteHandler,
    ExecuteStreamHandler,
    InterruptHandler,
    LogsHandler,
    UsageHandler,
)
from .info import AgentsHandler, ImagesHandler
from .openapi import OpenAPIHandler
from .sessions import (
    DependencyGraphHandler,
    RenameHandler,
    RestartHandler,
    SessionHandler,
    SessionsHandler,
    StatusHistoryHandler,
    TransitStatusHandler,
)
from .templates import FromTemplateHandler, template_handlers

default_handlers: list[tuple[str, type]] = [
    (rf"{API_PREFIX}/sessions", SessionsHandler),
    # Literal paths first: tornado takes the first match, and sessions/{ref} matches them too.
    (rf"{API_PREFIX}/sessions/transit-status", TransitStatusHandler),
    (rf"{API_PREFIX}/sessions/from-template", FromTemplateHandler),
    (rf"{API_PREFIX}/sessions/{REF}", SessionHandler),
    (rf"{API_PREFIX}/sessions/{REF}/rename", RenameHandler),
    (rf"{API_PREFIX}/sessions/{REF}/restart", RestartHandler),
    (rf"{API_PREFIX}/sessions/{REF}/status-history", StatusHistoryHandler),
    (rf"{API_PREFIX}/sessions/{REF}/dependency-graph", DependencyGraphHandler),
    (rf"{API_PREFIX}/sessions/{REF}/execute", ExecuteHandler),
    (rf"{API_PREFIX}/sessions/{REF}/execute/stream", ExecuteStreamHandler),
    (rf"{API_PREFIX}/sessions/{REF}/interrupt", InterruptHandler),
    (rf"{API_PREFIX}/sessions/{REF}/complete", CompleteHandler),
    (rf"{API_PREFIX}/sessions/{REF}/logs", LogsHandler),
    (rf"{API_PREFIX}/sessions/{REF}/usage", UsageHandler),
    (rf"{API_PREFIX}/images", ImagesHandler),
    (rf"{API_PREFIX}/agents", AgentsHandler),
    (rf"{API_PREFIX}/openapi.json", OpenAPIHandler),
]

# Admin routes: keypairs, resource policies, audit log (handlers/accounts.py).
default_handlers.extend(account_handlers)
# Session templates (handlers/templates.py).
default_handlers.extend(template_handlers)

__all__ = ["default_handlers"]
