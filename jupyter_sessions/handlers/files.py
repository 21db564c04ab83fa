"""File routes of a session: upload (streamed multipart), list, download, archive, mkdir, delete
and move. Bodies and answers stream both ways: an upload's body is read ~1 MiB at a time, its parts
are parsed as they arrive and handed on in ~4 MiB events through a small bounded queue; downloads
and archives are written as the agent produces them, each chunk flushed before the next is read
(so a slow client slows the source instead of filling memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from typing import Any

from jupyter_server.auth.decorator import authorized
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from tornado import web
from tornado.iostream import StreamClosedError

from ..actions.files import (
    DeleteFileAction,
    DownloadFileAction,
    DownloadFilesAction,
    ListFilesAction,
    MakeDirAction,
    MoveFileAction,
    UploadFilesAction,
    UploadStream,
    check_path,
)
from ..errors import InvalidRequest, PermissionDenied, SessionsError, TooLarge
from ..files import content_disposition
from .base import API_PREFIX, REF, SessionsAPIHandler
from .schema import ERROR, ERRORS, error_responses, json_response
from .sessions import OWNER_PARAM, REF_PARAM

FILES_RESOURCE = "jupyter_sessions:files"
#: Upload data is handed on in pieces of about this size: fewer hops between loop and thread,
#: and bigger frames into the helper's stdin (4 MiB frames went ~20% faster than 1 MiB ones).
PIECE = 4 << 20
#: Pieces waiting between the body parser and the agent: with the agent's read-ahead (2), the
#: piece being sent and the one being gathered, about 30 MB of an upload is in memory at most.
QUEUE_DEPTH = 2
#: How much of the body tornado reads at a time (its default is 64 KiB).
READ_SIZE = 1 << 20
#: Room for the multipart framing of many parts on top of the per-request limit of file bytes.
FRAMING_ALLOWANCE = 16 * 2**20
ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}
MORE_ERRORS = error_responses(404, 409, 502)
PATH_PARAM = {
    "name": "path",
    "in": "query",
    "schema": {"type": "string"},
    "description": "Relative to /home/work, or absolute inside it",
}
ENTRY = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "type": {"type": "string", "enum": ["file", "dir", "symlink", "other"]},
        "size": {"type": "integer"},
        "mode": {"type": "string", "description": "Octal permission bits, e.g. 0644"},
        "mtime": {"type": "string", "format": "date-time"},
        "owner": {"type": "string"},
        "target": {"type": "string", "description": "Symlinks only"},
    },
}
UPLOADED = {
    "type": "object",
    "properties": {
        "files": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "size": {"type": "integer"},
                    "status": {"type": "string", "enum": ["created", "replaced"]},
                },
            },
        }
    },
}


def _query_path(handler: SessionsAPIHandler, *, required: bool) -> str:
    """``?path=`` exactly as sent: tornado's own getters strip whitespace and drop control
    characters, which would turn a refused path (a NUL byte) into another one."""
    raw = handler.request.query_arguments.get("path")
    try:
        value = raw[-1].decode("utf-8") if raw else None
    except UnicodeDecodeError:
        raise InvalidRequest("path must be UTF-8", field="path") from None
    if value is None or value == "":
        if required:
            raise InvalidRequest("query parameter path is required", field="path")
        return ""
    return check_path(value, "path")


class FilesAPIHandler(SessionsAPIHandler):
    auth_resource = FILES_RESOURCE

    async def stream_out(self, chunks: AsyncIterator[bytes], content_type: str) -> None:
        """Write chunks as they come, one flushed before the next; a failure after the headers
        went out can only cut the connection (the client sees a short body)."""
        aclose = getattr(chunks, "aclose", None)
        try:
            async for chunk in chunks:
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            return  # the client went away; closing the source stops its thread
        except Exception as exc:
            if not self._headers_written:
                raise
            self.log.warning(
                "files: %s %s cut short: %s", self.request.method, self.request.path, exc
            )
            self.request.connection.close()
            return
        finally:
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        self.finish(set_content_type=content_type)


@web.stream_request_body
class FilesHandler(FilesAPIHandler):
    """``GET`` lists a directory, ``POST`` uploads (multipart, streamed), ``DELETE`` removes."""

    openapi = {
        "get": {
            "operationId": "list_files",
            "summary": "List a directory of the session's work directory",
            "parameters": [
                REF_PARAM,
                OWNER_PARAM,
                PATH_PARAM,
                {"name": "hidden", "in": "query", "schema": {"type": "boolean", "default": False}},
            ],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "path": {"type": "string"},
                            "files": {"type": "array", "items": ENTRY},
                            "storage": {"type": "object"},
                        },
                    },
                    "The directory's entries (symlinks are not followed)",
                ),
                **ERRORS,
                **MORE_ERRORS,
            },
        },
        "post": {
            "operationId": "upload_files",
            "summary": "Upload files (multipart; each part's filename is its path under ?path=)",
            "parameters": [
                REF_PARAM,
                OWNER_PARAM,
                PATH_PARAM,
                {
                    "name": "overwrite",
                    "in": "query",
                    "schema": {"type": "boolean", "default": False},
                },
            ],
            "requestBody": {
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "file": {"type": "string", "format": "binary"},
                            },
                        }
                    }
                }
            },
            "responses": {
                "201": json_response(UPLOADED, "Every file, written (all or none)"),
                **ERRORS,
                **MORE_ERRORS,
                "413": ERROR,
            },
        },
        "delete": {
            "operationId": "delete_file",
            "summary": "Delete a file, a symlink, or a directory (non-empty: with recursive=true)",
            "parameters": [
                REF_PARAM,
                OWNER_PARAM,
                {**PATH_PARAM, "required": True},
                {
                    "name": "recursive",
                    "in": "query",
                    "schema": {"type": "boolean", "default": False},
                },
            ],
            "responses": {
                "200": json_response({"type": "object"}, "What was deleted"),
                **ERRORS,
                **MORE_ERRORS,
            },
        },
    }

    _stream: UploadStream | None = None
    _task: asyncio.Future[Any] | None = None

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if self.request.method != "POST":
            return
        # The body streams into the action, so authorization can't wait for post().
        allowed = await _maybe_await(
            self.authorizer.is_authorized(self, self.current_user, "write", self.auth_resource)
        )
        if not allowed:
            raise PermissionDenied(f"not authorized to write on {self.auth_resource}")
        path = _query_path(self, required=False)
        overwrite = self.bool_arg("overwrite")
        kind, options = parse_options_header(self.request.headers.get("Content-Type", ""))
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            raise InvalidRequest("an upload is a multipart/form-data body with a boundary")
        raw_length = self.request.headers.get("Content-Length")
        length = int(raw_length) if raw_length and raw_length.isdigit() else None
        limit = self.sessions_app.files_max_upload_size
        if length is not None and length > limit + FRAMING_ALLOWANCE:
            raise TooLarge(
                f"the upload is {length} bytes; the limit is {limit} bytes per request",
                limit=limit,
            )
        self.request.connection.set_max_body_size(limit + FRAMING_ALLOWANCE)
        self._read_in_pieces()
        self._stream = UploadStream(QUEUE_DEPTH)
        self._events: list[tuple[str, Any]] = []
        self._piece: list[memoryview] = []
        self._piece_size = 0
        self._part_headers: dict[bytes, bytes] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )
        action = UploadFilesAction(
            caller=self.caller,
            ref=self.path_kwargs["ref"],
            owner_access_key=self.acting_for,
            path=path,
            overwrite=overwrite,
            content_length=length,
            stream=self._stream,
        )
        self._task = asyncio.ensure_future(self.processors.upload_files.wait_for_complete(action))
        # Its outcome is read by post(), or by the early answer; a dropped connection reads none.
        self._task.add_done_callback(lambda task: task.cancelled() or task.exception())

    # --- the multipart parser's callbacks (synchronous; events are sent after each chunk) -----

    def _part_begin(self) -> None:
        self._part_headers = {}

    def _header_end(self) -> None:
        self._part_headers[bytes(self._field).lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _kind, options = parse_options_header(self._part_headers.get(b"content-disposition", b""))
        name = options.get(b"filename")
        if not name:
            raise InvalidRequest("every part of an upload needs a filename (its path)")
        self._events.append(("begin", name.decode("utf-8", "surrogateescape")))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        """Keep a view of the chunk (no copy yet): a piece is joined once, when handed on. Only
        immutable chunks are kept by reference (tornado's are bytes)."""
        if not isinstance(data, bytes):
            data = bytes(data[start:end])
            start, end = 0, len(data)
        self._piece.append(memoryview(data)[start:end])
        self._piece_size += end - start

    def _flush_piece(self) -> None:
        if self._piece:
            piece, whole = self._piece, self._piece[0].obj
            if len(piece) == 1 and isinstance(whole, bytes) and len(whole) == piece[0].nbytes:
                data = whole  # a whole chunk of the body: passed on as it is
            else:
                data = b"".join(piece)
            self._events.append(("data", data))
            self._piece, self._piece_size = [], 0

    def _read_in_pieces(self) -> None:
        """Read this body ``READ_SIZE`` at a time instead of tornado's 64 KiB: 16 times fewer trips
        through the reader, the parser and ``data_received``. Only this connection changes (its
        own copy of the parameters; the stream's read size is put back in ``on_finish``)."""
        connection = self.request.connection
        params = getattr(connection, "params", None)
        stream = getattr(connection, "stream", None)
        if params is None or stream is None:
            return
        connection.params = copy.copy(params)
        connection.params.chunk_size = READ_SIZE
        self._read_chunk_size = stream.read_chunk_size
        stream.read_chunk_size = min(READ_SIZE, stream.max_buffer_size // 2)

    def _part_end(self) -> None:
        self._flush_piece()
        self._events.append(("end", None))

    def _end(self) -> None:
        self._ended = True

    async def data_received(self, chunk: bytes) -> None:
        stream, task = self._stream, self._task
        if stream is None or task is None or stream.closed:
            if task is not None and task.done() and not self._finished:
                self._answer_early(task)
            return
        try:
            self._parser.write(chunk)
        except (MultipartParseError, SessionsError) as exc:
            error = (
                exc if isinstance(exc, SessionsError) else InvalidRequest(f"bad multipart: {exc}")
            )
            await stream.put("error", error)
            stream.closed = True
            return
        if self._piece_size >= PIECE:
            self._flush_piece()
        events, self._events = self._events, []
        for kind, value in events:
            await stream.put(kind, value)

    def _answer_early(self, task: asyncio.Future[Any]) -> None:
        """The upload failed while its body still arrives: answer now (the connection closes)."""
        error = task.exception()
        if error is not None:
            self.send_error(500, exc_info=(type(error), error, error.__traceback__))

    def on_finish(self) -> None:
        read_chunk_size = getattr(self, "_read_chunk_size", None)
        stream = getattr(self.request.connection, "stream", None)
        if read_chunk_size is not None and stream is not None:
            stream.read_chunk_size = read_chunk_size
        super().on_finish()

    def on_connection_close(self) -> None:
        if self._stream is not None and self._task is not None and not self._task.done():
            self._stream.fail(InvalidRequest("the client closed the connection"))
        super().on_connection_close()

    # --- the methods ------------------------------------------------------------------------

    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        action = ListFilesAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
            path=_query_path(self, required=False),
            hidden=self.bool_arg("hidden"),
        )
        listing = await self.processors.list_files.wait_for_complete(action)
        storage = listing.get("storage", {})
        if storage.get("measured_at") is not None:
            storage["measured_at"] = storage["measured_at"].isoformat()
        self.write_json(listing)

    @web.authenticated
    async def post(self, ref: str) -> None:
        stream, task = self._stream, self._task
        assert stream is not None and task is not None
        if self._finished:
            return
        if not stream.closed:
            if self._ended:
                self._flush_piece()
                for kind, value in self._events:
                    await stream.put(kind, value)
                await stream.put("done")
            else:
                await stream.put("error", InvalidRequest("the multipart body ended early"))
        results = await task
        self.write_json({"files": results}, status=201)

    @web.authenticated
    @authorized
    async def delete(self, ref: str) -> None:
        action = DeleteFileAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
            path=_query_path(self, required=True),
            recursive=self.bool_arg("recursive"),
        )
        self.write_json(await self.processors.delete_file.wait_for_complete(action))


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) or asyncio.isfuture(value) else value


class FileContentHandler(FilesAPIHandler):
    openapi = {
        "get": {
            "operationId": "download_file",
            "summary": "Download one file, streamed (a single Range is honoured)",
            "parameters": [REF_PARAM, OWNER_PARAM, {**PATH_PARAM, "required": True}],
            "responses": {
                "200": {"description": "The file", "content": {"application/octet-stream": {}}},
                "206": {"description": "The requested range"},
                "416": {
                    "description": "The range starts past the end (Content-Range: bytes */size)",
                    "content": {"application/json": {"schema": ERROR_SCHEMA}},
                },
                **ERRORS,
                **MORE_ERRORS,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        action = DownloadFileAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
            path=_query_path(self, required=True),
            range=self.request.headers.get("Range"),
        )
        download = await self.processors.download_file.wait_for_complete(action)
        if download.partial:
            self.set_status(206)
            last = download.start + download.length - 1
            self.set_header("Content-Range", f"bytes {download.start}-{last}/{download.size}")
        self.set_header("Content-Type", download.content_type)
        self.set_header("Content-Disposition", content_disposition(download.name))
        self.set_header("Content-Length", str(download.length))
        self.set_header("Accept-Ranges", "bytes")
        await self.stream_out(download.chunks, download.content_type)


def _json_post(
    operation_id: str,
    summary: str,
    properties: dict[str, Any],
    ok: tuple[str, dict[str, Any]],
) -> dict[str, Any]:
    """The OpenAPI operation of a POST with a JSON body (every property but ``overwrite`` and
    ``format`` is required)."""
    required = [name for name in properties if name not in ("overwrite", "format")]
    schema = {"type": "object", "required": required, "properties": properties}
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": [REF_PARAM, OWNER_PARAM],
        "requestBody": {"content": {"application/json": {"schema": schema}}},
        "responses": {ok[0]: ok[1], **ERRORS, **MORE_ERRORS},
    }


class FileArchiveHandler(FilesAPIHandler):
    openapi = {
        "post": _json_post(
            "download_files",
            "Download files and directories as one tar or zip, streamed as it is made",
            {
                "paths": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "format": {"type": "string", "enum": ["tar", "zip"]},
            },
            (
                "200",
                {
                    "description": "The archive",
                    "content": {"application/x-tar": {}, "application/zip": {}},
                },
            ),
        ),
    }

    @web.authenticated
    @authorized
    async def post(self, ref: str) -> None:
        fields = DownloadFilesAction.parse(self.json_body())
        action = DownloadFilesAction(
            caller=self.caller, ref=ref, owner_access_key=self.acting_for, **fields
        )
        archive = await self.processors.download_files.wait_for_complete(action)
        self.set_header("Content-Type", archive.content_type)
        self.set_header("Content-Disposition", content_disposition(archive.filename))
        await self.stream_out(archive.chunks, archive.content_type)


class MoveFileHandler(FilesAPIHandler):
    openapi = {
        "post": _json_post(
            "move_file",
            "Rename or move a file or directory (parents of dst are made)",
            {
                "src": {"type": "string", "default": "a"},
                "dst": {"type": "string", "default": "b"},
                "overwrite": {"type": "boolean", "default": False},
            },
            ("200", json_response({"type": "object"}, "Where it is now")),
        ),
    }

    @web.authenticated
    @authorized
    async def post(self, ref: str) -> None:
        fields = MoveFileAction.parse(self.json_body())
        action = MoveFileAction(
            caller=self.caller, ref=ref, owner_access_key=self.acting_for, **fields
        )
        self.write_json(await self.processors.move_file.wait_for_complete(action))


class MakeDirHandler(FilesAPIHandler):
    openapi = {
        "post": _json_post(
            "make_dir",
            "Make a directory (and its missing parents)",
            {"path": {"type": "string", "default": "new-dir"}},
            ("201", json_response({"type": "object"}, "The directory made")),
        ),
    }

    @web.authenticated
    @authorized
    async def post(self, ref: str) -> None:
        fields = MakeDirAction.parse(self.json_body())
        action = MakeDirAction(
            caller=self.caller, ref=ref, owner_access_key=self.acting_for, **fields
        )
        self.write_json(await self.processors.make_dir.wait_for_complete(action), status=201)


FILES_PREFIX = rf"{API_PREFIX}/sessions/{REF}/files"
file_routes: list[tuple[str, type]] = [
    (FILES_PREFIX, FilesHandler),
    (rf"{FILES_PREFIX}/content", FileContentHandler),
    (rf"{FILES_PREFIX}/archive", FileArchiveHandler),
    (rf"{FILES_PREFIX}/move", MoveFileHandler),
    (rf"{FILES_PREFIX}/mkdir", MakeDirHandler),
]
