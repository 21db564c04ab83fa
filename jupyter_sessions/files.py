"""FileService: files inside a session's work directory (upload, list, download, archive, mkdir,
delete, move), with the session's status, the limits and the storage quota checked here.

Where a path leads is decided by the agent (``agents/local_files.py``, run in the container for
Docker): this module checks who may act on which session, that it is RUNNING, the per-file and
per-request upload limits, and the owner's ``storage_quota`` over ``/home/work``:

- before an upload: the work directory is measured (apparent sizes of its files); when what is
  there plus the request's Content-Length would pass the quota, the answer is 413 naming the
  limit and nothing is written;
- during an upload: bytes are counted as they pass, and crossing a limit aborts the request,
  whose files are then removed (they only ever existed as hidden temporaries);
- every ``storage_check_interval`` seconds the sweeper measures running sessions and logs those
  over their quota. Docker's local volume driver can't cap a volume's size, so code running in
  the session can still write past the quota; it then can't upload until it is back under.
"""

from __future__ import annotations

import mimetypes
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .actions.base import SessionRefAction
from .actions.files import (
    DeleteFileAction,
    Download,
    DownloadFileAction,
    DownloadFilesAction,
    ListFilesAction,
    MakeDirAction,
    MoveFileAction,
    UploadFilesAction,
)
from .agents.base import Agent
from .agents.local_files import WORK_ROOT
from .errors import InvalidRequest, NotFound, RangeNotSatisfiable, TooLarge
from .repository.orm import utcnow
from .repository.repository import SessionData
from .types import ALIVE_STATUSES

if TYPE_CHECKING:
    from .service import SessionService

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class FilesConfig:
    """Limits of the file actions (set from SessionsApp traitlets)."""

    max_upload_size: int = 16 * 2**30
    max_file_size: int = 16 * 2**30
    #: Seconds between storage measurements of running sessions by the sweeper (0: never).
    storage_check_interval: float = 600.0


@dataclass(frozen=True)
class Archive:
    filename: str
    content_type: str
    chunks: AsyncIterator[bytes]


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback and the exact name as RFC 5987 ``filename*``."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def parse_range(header: str | None, size: int) -> tuple[int, int]:
    """(start, length) of a single ``bytes=`` range; anything else means the whole file."""
    match = _RANGE.match(header.strip()) if header else None
    if match is None or match.groups() == ("", ""):
        return 0, size
    first, last = match.groups()
    if first == "":
        length = min(int(last), size)
        return size - length, length
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        raise RangeNotSatisfiable(f"range {header} is outside the file ({size} bytes)", size=size)
    return start, end - start + 1


class FileService:
    """One coroutine per file action; sessions are resolved through the session service."""

    def __init__(self, service: SessionService, config: FilesConfig | None = None) -> None:
        self.service = service
        self.config = config or FilesConfig()
        #: Last measured bytes under /home/work per session, and when.
        self.measured: dict[str, tuple[int, datetime]] = {}
        self._last_check = 0.0

    async def _target(self, action: SessionRefAction) -> tuple[SessionData, Agent, str]:
        """The session (the caller's, RUNNING), the agent holding its files, its container."""
        session = await self.service._resolve(action)
        agent, container = self.service.main_container(session, "files are reachable")
        self.service.touch_activity(session.id)
        return session, agent, container

    async def _quota(self, session: SessionData) -> tuple[int | None, str]:
        try:
            policy = await self.service.accounts.policy_of(session.owner_access_key)
        except NotFound:
            return None, ""
        return policy.storage_quota, policy.name

    # --- reading ---------------------------------------------------------------------------

    async def list_files(self, action: ListFilesAction) -> dict[str, Any]:
        session, agent, ref = await self._target(action)
        listing = await agent.file_op(
            session.id, ref, "list", {"path": action.path or WORK_ROOT, "hidden": action.hidden}
        )
        quota, _policy = await self._quota(session)
        used = self.measured.get(session.id)
        listing["storage"] = {
            "quota": quota,
            "used": used[0] if used else None,
            "measured_at": used[1] if used else None,
        }
        return dict(listing)

    async def download_file(self, action: DownloadFileAction) -> Download:
        session, agent, ref = await self._target(action)
        found = await agent.file_op(session.id, ref, "stat", {"path": action.path})
        size = int(found["size"])
        start, length = parse_range(action.range, size)
        name = str(found["name"])
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        args = {"path": found["path"], "offset": start, "length": length}
        chunks = agent.file_stream(session.id, ref, "read", args)
        return Download(name, content_type, size, start, length, chunks)

    async def download_files(self, action: DownloadFilesAction) -> Archive:
        session, agent, ref = await self._target(action)
        found = await agent.file_op(session.id, ref, "check", {"paths": list(action.paths)})
        if len(found) == 1 and found[0] != WORK_ROOT:
            stem = action.paths[0].rstrip("/").rsplit("/", 1)[-1] or "files"
        else:
            stem = "files"
        args = {"paths": list(action.paths), "format": action.format}
        chunks = agent.file_stream(session.id, ref, "archive", args)
        if action.format == "zip":
            return Archive(f"{stem}.zip", "application/zip", chunks)
        return Archive(f"{stem}.tar", "application/x-tar", chunks)

    # --- writing ---------------------------------------------------------------------------

    async def upload_files(self, action: UploadFilesAction) -> list[dict[str, Any]]:
        try:
            session, agent, ref = await self._target(action)
            limit = self.config.max_upload_size
            if action.content_length is not None and action.content_length > limit:
                raise TooLarge(
                    f"the upload is {action.content_length} bytes; the limit is {limit} bytes "
                    "per request",
                    limit=limit,
                )
            quota, policy = await self._quota(session)
            used = 0
            if quota is not None:
                used = await self._measure(session, agent, ref)
                if used + (action.content_length or 0) > quota:
                    raise self._over_quota(quota, policy, used)
            events = self._checked(action, used, quota, policy)
            args = {"path": action.path or WORK_ROOT, "overwrite": action.overwrite}
            results = await agent.file_upload(session.id, ref, args, events)
            if not results:
                raise InvalidRequest("the upload has no file parts (each needs a filename)")
            return list(results)
        finally:
            action.stream.close()

    @staticmethod
    def _over_quota(quota: int, policy: str, used: int) -> TooLarge:
        return TooLarge(
            f"storage quota of resource policy {policy!r} is {quota} bytes; {used} are in use "
            "and the upload would pass it",
            limit=quota,
            used=used,
        )

    async def _checked(
        self, action: UploadFilesAction, used: int, quota: int | None, policy: str
    ) -> AsyncIterator[tuple[str, Any]]:
        """The upload's events, counted against the limits and the quota as they pass."""
        total = in_file = 0
        name = ""
        per_file, per_request = self.config.max_file_size, self.config.max_upload_size
        async for kind, value in action.stream.events():
            if kind == "begin":
                name, in_file = str(value), 0
            elif kind == "data":
                in_file += len(value)
                total += len(value)
                if in_file > per_file:
                    raise TooLarge(f"{name}: over the limit of {per_file} bytes per file")
                if total > per_request:
                    raise TooLarge(f"the upload is over the limit of {per_request} bytes")
                if quota is not None and used + total > quota:
                    raise self._over_quota(quota, policy, used)
            yield kind, value

    async def make_dir(self, action: MakeDirAction) -> dict[str, Any]:
        session, agent, ref = await self._target(action)
        return dict(await agent.file_op(session.id, ref, "mkdir", {"path": action.path}))

    async def delete_file(self, action: DeleteFileAction) -> dict[str, Any]:
        session, agent, ref = await self._target(action)
        args = {"path": action.path, "recursive": action.recursive}
        return dict(await agent.file_op(session.id, ref, "delete", args))

    async def move_file(self, action: MoveFileAction) -> dict[str, Any]:
        session, agent, ref = await self._target(action)
        args = {"src": action.src, "dst": action.dst, "overwrite": action.overwrite}
        return dict(await agent.file_op(session.id, ref, "move", args))

    # --- storage ---------------------------------------------------------------------------

    async def _measure(self, session: SessionData, agent: Agent, ref: str) -> int:
        used = int(await agent.file_op(session.id, ref, "usage", {}))
        self.measured[session.id] = (used, utcnow())
        return used

    async def check_storage(self) -> None:
        """The sweeper's hook: every ``storage_check_interval`` seconds, measure the running
        sessions and log those over their quota (nothing stops code in a session from writing)."""
        interval = self.config.storage_check_interval
        if interval <= 0 or time.monotonic() - self._last_check < interval:
            return
        self._last_check = time.monotonic()
        for session in await self.service.repository.in_statuses(set(ALIVE_STATUSES)):
            kernel = session.main_kernel
            if kernel is None or kernel.agent_id is None:
                continue
            quota, policy = await self._quota(session)
            if quota is None:
                continue
            try:
                agent = self.service.agents.get(kernel.agent_id)
                ref = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
                used = await self._measure(session, agent, ref)
            except Exception as exc:  # one unreachable agent must not stop the sweep
                self.service.log.debug("storage of %s not measured: %s", session.id, exc)
                continue
            if used > quota:
                self.service.log.warning(
                    "session %s uses %d bytes of /home/work, over the quota of %d of policy %r",
                    session.id,
                    used,
                    quota,
                    policy,
                )
        known = {s.id for s in await self.service.repository.in_statuses(set(ALIVE_STATUSES))}
        for session_id in list(self.measured):
            if session_id not in known:
                del self.measured[session_id]
