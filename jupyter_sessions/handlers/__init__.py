"""The REST routes, all under ``{base_url}jupyter-sessions/api/`` (see DESIGN §4)."""

from __future__ import annotations

from .accounts import account_handlers
from .admin_agents import admin_agent_handlers
from .base import API_PREFIX, REF
from .clusters import CreateClusterHandler
from .events import event_handlers
from .execute import (
    CompleteHandler,
    ExecuteHandler,
    ExecuteStreamHandler,
    InterruptHandler,
    LogsHandler,
    UsageHandler,
)
from .files import file_routes
from .images import image_handlers
from .info import ImagesHandler
from .kernels import kernel_handlers
from .openapi import OpenAPIHandler
from .services import service_handlers
from .sessions import (
    DependencyGraphHandler,
    RenameHandler,
    RestartHandler,
    SessionHandler,
    SessionsHandler,
    StatusHistoryHandler,
    TransitStatusHandler,
)
from .tasks import task_handlers
from .templates import FromTemplateHandler, template_handlers

default_handlers: list[tuple[str, type]] = [
    (rf"{API_PREFIX}/sessions", SessionsHandler),
    # Literal paths first: tornado takes the first match, and sessions/{ref} matches them too.
    (rf"{API_PREFIX}/sessions/transit-status", TransitStatusHandler),
    (rf"{API_PREFIX}/sessions/from-template", FromTemplateHandler),
    (rf"{API_PREFIX}/sessions/cluster", CreateClusterHandler),
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
    (rf"{API_PREFIX}/openapi.json", OpenAPIHandler),
]

# Admin routes: keypairs, resource policies, audit log (handlers/accounts.py).
default_handlers.extend(account_handlers)
# Session templates (handlers/templates.py).
default_handlers.extend(template_handlers)
# Agents and scaling groups (handlers/admin_agents.py).
default_handlers.extend(admin_agent_handlers)
# Kernel provisioners: a session kernel's connection info (handlers/kernels.py).
default_handlers.extend(kernel_handlers)
# Services inside sessions (handlers/services.py; the proxy itself is routed by host name).
default_handlers.extend(service_handlers)
# Abuse reports, commits and images; background tasks; the event stream (observability).
default_handlers.extend(image_handlers)
default_handlers.extend(task_handlers)
default_handlers.extend(event_handlers)
# Files in a session's work directory (handlers/files.py).
default_handlers.extend(file_routes)

__all__ = ["default_handlers"]
