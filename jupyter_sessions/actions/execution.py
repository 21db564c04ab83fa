"""Execution actions: run code in a session (query, batch, input, continue), interrupt, complete.

``ExecuteRequest.from_json`` accepts Backend.AI's spelling too (``runId``), so its SDK works.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import InvalidRequest
from .base import SessionRefAction

MODES = ("query", "batch", "input", "continue")
MAX_CODE_BYTES = 1 * 2**20
MAX_RUN_ID = 64
BATCH_STEPS = ("clean", "build", "exec")


def _number(options: Mapping[str, Any], key: str, low: float, high: float) -> float | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequest(
            f"options.{key} must be a number from {low:g} to {high:g}", field=f"options.{key}"
        )
    return float(value)


@dataclass(frozen=True)
class ExecuteRequest:
    mode: str
    code: str
    run_id: str | None
    options: dict[str, Any] = field(default_factory=dict)
    #: Seconds before a run is interrupted and answers exec-timeout (None: the server's default).
    timeout: float | None = None
    #: Seconds a call waits before answering ``continued`` (None: the server's default).
    flush_interval: float | None = None

    @classmethod
    def from_json(cls, body: Any) -> ExecuteRequest:
        if not isinstance(body, Mapping):
            raise InvalidRequest("the request body must be a JSON object")
        mode = body.get("mode")
        if mode not in MODES:
            raise InvalidRequest(f"mode must be one of: {', '.join(MODES)}", field="mode")
        code = body.get("code", "")
        if not isinstance(code, str):
            raise InvalidRequest("code must be a string", field="code")
        if len(code.encode()) > MAX_CODE_BYTES:
            raise InvalidRequest(f"code is over {MAX_CODE_BYTES} bytes", field="code")
        run_id = body.get("run_id", body.get("runId"))
        if run_id is not None and (
            not isinstance(run_id, str) or not run_id or len(run_id) > MAX_RUN_ID
        ):
            raise InvalidRequest(
                f"run_id must be a string of 1 to {MAX_RUN_ID} characters", field="run_id"
            )
        if mode in ("continue", "input") and run_id is None:
            raise InvalidRequest(
                f"mode {mode} needs the run_id of the run it continues", field="run_id"
            )
        options = body.get("options") or {}
        if not isinstance(options, Mapping):
            raise InvalidRequest("options must be an object", field="options")
        if mode == "batch":
            for step in BATCH_STEPS:
                value = options.get(step)
                if value is not None and not isinstance(value, str):
                    raise InvalidRequest(
                        f"options.{step} must be a command string", field=f"options.{step}"
                    )
            if not any(options.get(step) for step in BATCH_STEPS):
                raise InvalidRequest(
                    "batch mode needs options.clean, options.build or options.exec", field="options"
                )
        return cls(
            mode=mode,
            code=code,
            run_id=run_id,
            options=dict(options),
            timeout=_number(options, "timeout", 0, 7 * 24 * 3600),
            flush_interval=_number(options, "flush_interval", 0.01, 30),
        )


@dataclass(frozen=True, kw_only=True)
class ExecuteAction(SessionRefAction):
    operation: ClassVar[str] = "execute_session"
    request: ExecuteRequest


@dataclass(frozen=True)
class ExecuteResult:
    run_id: str
    status: str
    exit_code: int | None
    console: list[list[Any]]
    options: dict[str, Any]
    files: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class InterruptAction(SessionRefAction):
    operation: ClassVar[str] = "interrupt"


@dataclass(frozen=True, kw_only=True)
class CompleteAction(SessionRefAction):
    operation: ClassVar[str] = "complete"
    code: str
    cursor_pos: int

    @staticmethod
    def parse(body: Any) -> tuple[str, int]:
        if not isinstance(body, Mapping):
            raise InvalidRequest("the request body must be a JSON object")
        code = body.get("code")
        if not isinstance(code, str) or len(code.encode()) > MAX_CODE_BYTES:
            raise InvalidRequest("code must be a string of at most 1 MiB", field="code")
        cursor = body.get("cursor_pos", len(code))
        if isinstance(cursor, bool) or not isinstance(cursor, int) or not 0 <= cursor <= len(code):
            raise InvalidRequest(
                "cursor_pos must be an integer from 0 to len(code)", field="cursor_pos"
            )
        return code, cursor


@dataclass(frozen=True)
class CompleteResult:
    matches: list[str]
    cursor_start: int
    cursor_end: int
    metadata: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class GetContainerLogsAction(SessionRefAction):
    """A kernel's own output; for an ended batch session, the output its command left."""

    operation: ClassVar[str] = "get_container_logs"
    kernel: str = "main1"
    tail: int | None = None


@dataclass(frozen=True, kw_only=True)
class GetUsageAction(SessionRefAction):
    """What a session's kernels use now (CPU time so far, memory, processes)."""

    operation: ClassVar[str] = "get_usage"
