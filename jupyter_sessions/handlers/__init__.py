"""The REST routes, all under ``{base_url}jupyter-sessions/api/`` (see DESIGN §4)."""

from __future__ import annotations

from .accounts import account_handlers
from .base import API_PREFIX, REF
from .execute import CompleteHandler, ExecuteHandler, ExecuteStreamHandler, InterruptHandler
from .info import AgentsHandler, ImagesHandler
from .openapi import OpenAPIHandler
from .sessions import SessionHandler, SessionsHandler, StatusHistoryHandler

default_handlers: list[tuple[str, type]] = [
    (rf"{API_PREFIX}/sessions", SessionsHandler),
    (rf"{API_PREFIX}/sessions/{REF}", SessionHandler),
    (rf"{API_PREFIX}/sessions/{REF}/status-history", StatusHistoryHandler),
    (rf"{API_PREFIX}/sessions/{REF}/execute", ExecuteHandler),
    (rf"{API_PREFIX}/sessions/{REF}/execute/stream", ExecuteStreamHandler),
    (rf"{API_PREFIX}/sessions/{REF}/interrupt", InterruptHandler),
    (rf"{API_PREFIX}/sessions/{REF}/complete", CompleteHandler),
    (rf"{API_PREFIX}/images", ImagesHandler),
    (rf"{API_PREFIX}/agents", AgentsHandler),
    (rf"{API_PREFIX}/openapi.json", OpenAPIHandler),
]

# Admin routes: keypairs, resource policies, audit log (handlers/accounts.py).
default_handlers.extend(account_handlers)

__all__ = ["default_handlers"]
