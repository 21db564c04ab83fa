"""File actions: upload, list, download, archive, mkdir, delete and move inside a session's work
directory. Paths are checked lexically here (NUL, over-long, ``..`` leaving the root, absolute
elsewhere: 400); the agent checks them again where they lead (symlinks), see agents/local_files.py.

``UploadStream`` carries an upload's body from the request parser to the agent as events
(``("begin", relpath)``, ``("data", bytes)``, ``("end", None)``), through a small bounded queue so
that a fast client waits for a slow container instead of filling the server's memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..agents.local_files import FileOpError, split_path
from ..errors import InvalidRequest
from .base import SessionRefAction

ARCHIVE_FORMATS = ("tar", "zip")
MAX_ARCHIVE_PATHS = 1000


def check_path(value: Any, field: str) -> str:
    """A request path that may be inside the work directory (where it leads is the agent's say)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string", field=field)
    try:
        split_path(value)
    except FileOpError as exc:
        raise InvalidRequest(f"{field}: {exc.message}", field=field) from None
    return value


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false", field=name)
    return value


class UploadStream:
    """An upload's parts as events, from the body parser (``put``) to the agent (iteration).

    ``close`` is the consumer's: once it stopped (done or failed), ``put`` drops what comes so
    the rest of the body is read and discarded instead of waiting forever.
    """

    def __init__(self, depth: int = 16) -> None:
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(depth)
        self.closed = False

    async def put(self, kind: str, value: Any = None) -> None:
        if not self.closed:
            await self._queue.put((kind, value))

    def close(self) -> None:
        self.closed = True
        while not self._queue.empty():
            self._queue.get_nowait()

    def fail(self, error: Exception) -> None:
        """The producer's side gave up (the client left): the consumer raises ``error`` next."""
        self.close()
        self._queue.put_nowait(("error", error))

    async def events(self) -> AsyncIterator[tuple[str, Any]]:
        """Events until the body ends; a body that failed (malformed, too large) raises here."""
        while True:
            kind, value = await self._queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield kind, value


@dataclass(frozen=True, kw_only=True)
class ListFilesAction(SessionRefAction):
    operation: ClassVar[str] = "list_files"
    path: str = ""
    hidden: bool = False


@dataclass(frozen=True, kw_only=True)
class DownloadFileAction(SessionRefAction):
    operation: ClassVar[str] = "download_file"
    path: str
    #: A ``Range: bytes=`` header as given (one range), or None.
    range: str | None = None


@dataclass(frozen=True)
class Download:
    """A file on its way out: what the headers say, then the bytes as they come."""

    name: str
    content_type: str
    size: int
    start: int
    length: int
    chunks: AsyncIterator[bytes]

    @property
    def partial(self) -> bool:
        return self.length != self.size or self.start != 0


@dataclass(frozen=True, kw_only=True)
class DownloadFilesAction(SessionRefAction):
    operation: ClassVar[str] = "download_files"
    paths: tuple[str, ...]
    format: str = "tar"

    @classmethod
    def parse(cls, body: Any) -> dict[str, Any]:
        """The body's fields: ``{paths: [...], format: tar|zip}``."""
        body = _object(body)
        unknown = set(body) - {"paths", "format"}
        if unknown:
            raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
        paths = body.get("paths")
        if not isinstance(paths, list) or not paths or len(paths) > MAX_ARCHIVE_PATHS:
            raise InvalidRequest(
                f"paths must be a list of 1 to {MAX_ARCHIVE_PATHS} paths", field="paths"
            )
        fmt = body.get("format", "tar")
        if fmt not in ARCHIVE_FORMATS:
            raise InvalidRequest("format must be tar or zip", field="format")
        return {"paths": tuple(check_path(p, "paths") for p in paths), "format": fmt}


@dataclass(frozen=True, kw_only=True)
class UploadFilesAction(SessionRefAction):
    operation: ClassVar[str] = "upload_files"
    path: str = ""
    overwrite: bool = False
    #: The request's Content-Length (None when chunked): checked against limits before a byte.
    content_length: int | None = None
    stream: UploadStream


@dataclass(frozen=True, kw_only=True)
class DeleteFileAction(SessionRefAction):
    operation: ClassVar[str] = "delete_file"
    path: str
    recursive: bool = False


@dataclass(frozen=True, kw_only=True)
class MoveFileAction(SessionRefAction):
    operation: ClassVar[str] = "move_file"
    src: str
    dst: str
    overwrite: bool = False

    @classmethod
    def parse(cls, body: Any) -> dict[str, Any]:
        """``{src, dst, overwrite?}``."""
        body = _object(body)
        unknown = set(body) - {"src", "dst", "overwrite"}
        if unknown:
            raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
        return {
            "src": check_path(body.get("src"), "src"),
            "dst": check_path(body.get("dst"), "dst"),
            "overwrite": _flag(body, "overwrite"),
        }


@dataclass(frozen=True, kw_only=True)
class MakeDirAction(SessionRefAction):
    operation: ClassVar[str] = "make_dir"
    path: str

    @classmethod
    def parse(cls, body: Any) -> dict[str, Any]:
        """``{path}``."""
        body = _object(body)
        unknown = set(body) - {"path"}
        if unknown:
            raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
        return {"path": check_path(body.get("path"), "path")}
