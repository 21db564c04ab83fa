"""The Python client of the REST API (DESIGN §4): ``SessionsClient`` (blocking) and
``AsyncSessionsClient`` (asyncio).

Both classes share one request layer: every action is described once, in ``_Api``, as a ``Call``
(method, path, query, body, what the answer is), and each class only sends calls its own way
(``httpx.Client`` or ``httpx.AsyncClient``). Errors come back as the server's own error tree
(``jupyter_sessions.errors``: ``NotFound``, ``InvalidStatus``...), built from the API's
``{"message", "reason"}`` answer, so ``except NotFound`` reads the same on both sides of the wire.

The client finds the server by itself (``find_server``): an explicit URL, else the environment
(``JUPYTER_SESSIONS_URL`` with ``JUPYTER_SESSIONS_TOKEN`` or ``JUPYTER_SESSIONS_KEYPAIR``), else
the runtime files (``jpserver-*.json``) of the Jupyter servers running for this user. The sync
client is safe inside a kernel (it never needs an event loop), which is what the magics use.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import getpass
import io
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, Literal, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from . import errors
from .errors import SessionsError

ENV_URL = "JUPYTER_SESSIONS_URL"
ENV_TOKEN = "JUPYTER_SESSIONS_TOKEN"  # noqa: S105 - the variable's name, not a secret
ENV_KEYPAIR = "JUPYTER_SESSIONS_KEYPAIR"
API_PATH = "jupyter-sessions/api/"
#: Statuses after which a session changes no more; and the ones worth waiting for.
FINAL_STATUSES = frozenset({"TERMINATED", "CANCELLED"})
SETTLED_STATUSES = frozenset({"RUNNING", "ERROR", "TERMINATED", "CANCELLED"})
TASK_DONE = frozenset({"done", "failed", "cancelled"})
RUN_DONE = frozenset({"finished", "exec-timeout"})
POLL_INTERVAL = 0.5  # seconds between two reads of a status being waited for

OutputCallback = Callable[[str, Any], None]
InputCallback = Callable[[str, bool], str]


class ServerUnreachable(SessionsError):
    """No server was found, or the one named did not answer (client side only)."""

    status_code = 503
    reason = "server-unreachable"


class ServerError(SessionsError):
    """An answer outside the error tree (a 500, or a proxy's error page)."""

    reason = "server-error"


_BY_REASON: dict[str, type[SessionsError]] = {
    cls.reason: cls
    for cls in (
        errors.InvalidRequest,
        errors.Unauthenticated,
        errors.PermissionDenied,
        errors.NotFound,
        errors.InvalidStatus,
        errors.Conflict,
        errors.TooLarge,
        errors.QuotaExceeded,
        errors.AgentError,
        errors.AgentUnavailable,
        errors.Timeout,
    )
}
_BY_STATUS: dict[int, type[SessionsError]] = {
    cls.status_code: cls for cls in reversed(list(_BY_REASON.values()))
}


def error_from_answer(status: int, body: Any) -> SessionsError:
    """The error tree's exception for an error answer (by reason, else by HTTP status)."""
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        message, reason = body["message"], str(body.get("reason", ""))
        details = body.get("details") if isinstance(body.get("details"), Mapping) else {}
    else:
        message, reason, details = f"HTTP {status}: {str(body)[:200]}", "", {}
    cls = _BY_REASON.get(reason) or _BY_STATUS.get(status) or ServerError
    error = cls(message, **dict(details or {}))
    error.details.setdefault("http_status", status)
    return error


# --- finding the server ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    """Where the Jupyter server is (its base URL, ending in ``/``) and how to authenticate."""

    url: str
    token: str | None = None
    keypair: tuple[str, str] | None = None
    source: str = "explicit"

    @property
    def api_url(self) -> str:
        return self.url + API_PATH

    def headers(self) -> dict[str, str]:
        if self.keypair is not None:
            return {"Authorization": f"Keypair {self.keypair[0]}:{self.keypair[1]}"}
        if self.token:
            return {"Authorization": f"token {self.token}"}
        return {}

    def ws_url(self, path: str) -> str:
        parts = urlsplit(self.api_url + path)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))


def parse_keypair(value: str | tuple[str, str] | None) -> tuple[str, str] | None:
    """``"ACCESS:SECRET"`` (or a pair) → the pair; a malformed value is refused, never sent."""
    if value is None or isinstance(value, tuple):
        return value
    access, sep, secret = value.strip().partition(":")
    if not sep or not access or not secret:
        raise errors.InvalidRequest("a keypair is ACCESS_KEY:SECRET_KEY")
    return access, secret


def _base_url(url: str) -> str:
    url = url.strip()
    if API_PATH in url:  # accept the API's own URL too
        url = url[: url.index(API_PATH)]
    return url if url.endswith("/") else url + "/"


def running_servers(runtime_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The runtime files of this user's live Jupyter servers, newest first (read, never removed)."""
    if runtime_dir is None:
        from jupyter_core.paths import jupyter_runtime_dir

        runtime_dir = jupyter_runtime_dir()
    found: list[tuple[float, dict[str, Any]]] = []
    for path in Path(runtime_dir).glob("jpserver-*.json"):
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            alive = _pid_alive(int(info["pid"]))
            mtime = path.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if alive and isinstance(info.get("url"), str):
            found.append((mtime, info))
    return [info for _, info in sorted(found, key=lambda pair: pair[0], reverse=True)]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(server: ServerInfo, timeout: float) -> bool:
    """Does this server run the extension and take our credentials?"""
    try:
        response = httpx.get(
            server.api_url + "sessions",
            params={"limit": 1},
            headers=server.headers(),
            timeout=timeout,
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def find_server(
    url: str | None = None,
    token: str | None = None,
    keypair: str | tuple[str, str] | None = None,
    *,
    runtime_dir: str | os.PathLike[str] | None = None,
    probe_timeout: float = 2.0,
) -> ServerInfo:
    """The server to talk to: ``url`` if given, else ``$JUPYTER_SESSIONS_URL``, else the newest
    running Jupyter server (runtime files) that answers our API with its own token."""
    pair = parse_keypair(keypair or os.environ.get(ENV_KEYPAIR) or None)
    token = token or os.environ.get(ENV_TOKEN) or None
    if url is None and os.environ.get(ENV_URL):
        url = os.environ[ENV_URL]
        source = f"${ENV_URL}"
    else:
        source = "explicit"
    if url is not None:
        # Only a token given for it: the environment's other tokens never go to a named URL.
        return ServerInfo(_base_url(url), token, pair, source)
    # A local server's kernel inherits its token ($JUPYTER_TOKEN, or under JupyterHub the Hub's
    # API token for that server) when its runtime file has none (a password-protected server).
    fallback = os.environ.get("JUPYTER_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN") or None
    candidates = [
        ServerInfo(
            _base_url(info["url"]),
            token or info.get("token") or fallback,
            pair,
            f"runtime file of pid {info['pid']}",
        )
        for info in running_servers(runtime_dir)
    ]
    if len(candidates) == 1:
        return candidates[0]
    for candidate in candidates:
        if _answers(candidate, probe_timeout):
            return candidate
    where = "none of the running Jupyter servers answers" if candidates else "no Jupyter server"
    raise ServerUnreachable(
        f"{where} with the jupyter_sessions API: start one, or set ${ENV_URL} "
        f"(and ${ENV_TOKEN} or ${ENV_KEYPAIR}), or pass url= and token="
    )


# --- the request layer ----------------------------------------------------------------------

Kind = Literal["json", "text", "none"]


@dataclass(frozen=True)
class Call:
    """One request of the API, described independently of how it is sent."""

    method: str
    path: str
    params: Mapping[str, Any] = field(default_factory=dict)
    body: Any = None
    kind: Kind = "json"

    def query(self) -> dict[str, str]:
        """Query parameters with None left out and booleans as the API spells them."""
        out: dict[str, str] = {}
        for key, value in self.params.items():
            if value is None:
                continue
            out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out

    def request_args(self, server: ServerInfo) -> dict[str, Any]:
        args: dict[str, Any] = {
            "method": self.method,
            "url": server.api_url + self.path,
            "params": self.query(),
            "headers": server.headers(),
        }
        if self.body is not None:
            args["json"] = self.body
        return args


def ref_path(ref: str, *rest: str) -> str:
    """``sessions/{ref}/...`` with the reference quoted (a name never escapes its segment)."""
    return "/".join(["sessions", quote(str(ref), safe=""), *rest])


def _drop_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def check_answer(status: int, content: bytes) -> None:
    if status >= 400:
        try:
            body: Any = json.loads(content)
        except ValueError:
            body = content.decode("utf-8", "replace")
        raise error_from_answer(status, body)


def parse_answer(call: Call, status: int, content: bytes) -> Any:
    check_answer(status, content)
    if call.kind == "text":
        return content.decode("utf-8", "replace")
    if call.kind == "none" or not content:
        return None
    return json.loads(content)


@dataclass(frozen=True)
class Event:
    """One server-sent event: its name and its JSON data."""

    event: str
    data: Any


class SSEParser:
    """Turns a text stream into ``Event``s (the ``event:`` / ``data:`` lines of SSE)."""

    def __init__(self) -> None:
        self.name = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> Event | None:
        line = line.rstrip("\r\n")
        if not line:
            if not self.data:
                return None
            raw, name = "\n".join(self.data), self.name
            self.name, self.data = "message", []
            try:
                return Event(name, json.loads(raw))
            except ValueError:
                return Event(name, raw)
        if line.startswith(":"):
            return None
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            self.name = value
        elif key == "data":
            self.data.append(value)
        return None


class StreamedRun:
    """One streamed execution, whatever carries its frames: console items in, the answers to
    input requests and the final result out.

    The WebSocket sends each console item as ``[type, data]``, a result-shaped frame when the code
    waits for input or is done, and ``{"error": ...}`` on failure."""

    def __init__(self, on_output: OutputCallback | None, on_input: InputCallback | None) -> None:
        self.on_output = on_output
        self.on_input = on_input
        self.console: list[list[Any]] = []

    @staticmethod
    def request(code: str, options: Mapping[str, Any] | None) -> str:
        """The first frame: the execute request."""
        return json.dumps(_drop_none({"mode": "query", "code": code, "options": options}))

    def feed(self, frame: str | bytes | None) -> str | dict[str, Any] | None:
        """One frame in → None (more to come), a frame to send back (the answer to an input
        request), or the final result (with the whole console)."""
        if frame is None or frame == "":
            raise ServerError("the execute stream closed before the result")
        item = json.loads(frame)
        if isinstance(item, list) and len(item) == 2:
            self.console.append(item)
            if self.on_output is not None:
                self.on_output(item[0], item[1])
            return None
        if isinstance(item, dict) and "error" in item:
            raise error_from_answer(int(item.get("status", 500)), item["error"])
        if isinstance(item, dict) and item.get("status") in RUN_DONE:
            return {**item, "console": self.console}
        if isinstance(item, dict) and "status" in item:
            return json.dumps({"mode": "input", "code": _answer(self.on_input, item)})
        raise ServerError(f"unexpected frame from the execute stream: {str(item)[:200]}")


def ask_input(prompt: str, is_password: bool) -> str:
    """The default answer to a session's ``input()``: ask here (the prompt was already shown)."""
    return getpass.getpass("") if is_password else input()


Upload = str | os.PathLike[str] | tuple[str, bytes]


def upload_parts(
    items: Iterable[Upload], stack: contextlib.ExitStack
) -> list[tuple[str, tuple[str, IO[bytes]]]]:
    """Multipart parts for local files and folders, each named by its path relative to the folder
    it was given in (a folder keeps its own name: ``data/`` uploads as ``data/...``), and for
    ``(name, bytes)`` pairs (content from elsewhere, e.g. a browser's FileUpload)."""
    parts: list[tuple[str, tuple[str, IO[bytes]]]] = []
    for given in items:
        if isinstance(given, tuple):
            parts.append(("file", (given[0], io.BytesIO(given[1]))))
            continue
        root = Path(given)
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file())
            names = [root.name + "/" + p.relative_to(root).as_posix() for p in files]
        elif root.is_file():
            files, names = [root], [root.name]
        else:
            raise errors.NotFound(f"no such local file or folder: {given}")
        for path, name in zip(files, names, strict=True):
            parts.append(("file", (name, stack.enter_context(path.open("rb")))))
    if not parts:
        raise errors.InvalidRequest("nothing to upload")
    return parts


def upload_call(ref: str, path: str | None, overwrite: bool) -> Call:
    return Call("POST", ref_path(ref, "files"), {"path": path, "overwrite": overwrite or None})


J = TypeVar("J")  # what a JSON action returns: the value, or an awaitable of it
T = TypeVar("T")  # what a text action returns
S = TypeVar("S")  # what a streaming action returns: an iterator, or an async iterator


class _Api(abc.ABC, Generic[J, T, S]):
    """Every action of the API, once. Subclasses say how a ``Call`` is sent."""

    server: ServerInfo | None

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        keypair: str | tuple[str, str] | None = None,
        timeout: float = 60.0,
        server: ServerInfo | None = None,
    ) -> None:
        self._where = (url, token, keypair)
        self.server = server
        self.timeout = timeout
        self._setup()

    @abc.abstractmethod
    def _setup(self) -> None:
        """Open the HTTP client (and, for the blocking one, find the server now)."""

    @abc.abstractmethod
    def _json(self, call: Call) -> J:
        """Sent by the blocking or the asyncio transport."""

    @abc.abstractmethod
    def _multipart(self, call: Call, items: Iterable[Upload]) -> J:
        """Sent by the blocking or the asyncio transport."""

    @abc.abstractmethod
    def _save(self, call: Call, target: Path) -> J:
        """Sent by the blocking or the asyncio transport."""

    @abc.abstractmethod
    def _poll(self, fetch: Callable[[], Any], wanted: frozenset[str], timeout: float) -> J:
        """Sent by the blocking or the asyncio transport."""

    # --- what takes more than one plain request -----------------------------------------------

    def upload(
        self,
        ref: str,
        paths: Iterable[Upload],
        path: str | None = None,
        *,
        overwrite: bool = False,
    ) -> J:
        """Upload local files and folders (or ``(name, bytes)`` pairs) into the session;
        ``path`` is a folder there (default: the work directory)."""
        return self._multipart(upload_call(ref, path, overwrite), paths)

    def download(self, ref: str, path: str, dest: str | os.PathLike[str] | None = None) -> J:
        """Stream one file of the session to ``dest`` (default: its name, here); → the Path."""
        call = Call("GET", ref_path(ref, "files", "content"), {"path": path})
        return self._save(call, _download_target(path, dest))

    def download_archive(
        self, ref: str, paths: Iterable[str], dest: str | os.PathLike[str], *, format: str = "tar"
    ) -> J:
        """Several files or folders as one tar or zip archive, streamed to ``dest``."""
        body = {"paths": list(paths), "format": format}
        return self._save(Call("POST", ref_path(ref, "files", "archive"), body=body), Path(dest))

    def wait_for(
        self, ref: str, statuses: Iterable[str] = SETTLED_STATUSES, *, timeout: float = 120.0
    ) -> J:
        """Poll the session until its status is one of ``statuses``; Timeout after ``timeout``
        seconds. A name reaches only active sessions: wait for an end by id."""
        return self._poll(lambda: self.get_session(ref), frozenset(statuses), timeout)

    def wait_task(self, task_id: str, *, timeout: float = 600.0) -> J:
        """Poll a background task until it is done, failed or cancelled."""
        return self._poll(lambda: self.get_task(task_id), TASK_DONE, timeout)

    @abc.abstractmethod
    def _text(self, call: Call) -> T:
        """Sent by the blocking or the asyncio transport."""

    @abc.abstractmethod
    def _lines(self, call: Call) -> S:
        """Sent by the blocking or the asyncio transport."""

    @abc.abstractmethod
    def _events(self, call: Call) -> S:
        """Sent by the blocking or the asyncio transport."""

    # --- sessions ---------------------------------------------------------------------------

    def list_sessions(
        self,
        match: str | None = None,
        status: str | None = None,
        *,
        owner_access_key: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> J:
        """``{"sessions": [...], "total": N}``; ``match`` is a name or id prefix."""
        params = {
            "match": match,
            "status": status,
            "owner_access_key": owner_access_key,
            "limit": limit,
            "offset": offset,
        }
        return self._json(Call("GET", "sessions", params))

    def create_session(
        self,
        image: str | None = None,
        *,
        name: str | None = None,
        resources: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> J:
        """``POST sessions``: any field of DESIGN §4 (type, environ, enqueue_only...)."""
        body = _drop_none({"image": image, "name": name, "resources": resources, **fields})
        return self._json(Call("POST", "sessions", body=body))

    def create_from_template(self, template_id: str, **overrides: Any) -> J:
        body = {"template_id": template_id, **overrides}
        return self._json(Call("POST", "sessions/from-template", body=body))

    def create_cluster(self, **body: Any) -> J:
        return self._json(Call("POST", "sessions/cluster", body=body))

    def get_session(self, ref: str, *, owner_access_key: str | None = None) -> J:
        params = {"owner_access_key": owner_access_key}
        return self._json(Call("GET", ref_path(ref), params))

    def modify_session(self, ref: str, **changes: Any) -> J:
        """``PATCH``: tag, priority, idle_timeout, name; resources while PENDING."""
        return self._json(Call("PATCH", ref_path(ref), body=changes))

    def rename_session(self, ref: str, name: str) -> J:
        return self._json(Call("POST", ref_path(ref, "rename"), body={"name": name}))

    def restart_session(self, ref: str) -> J:
        return self._json(Call("POST", ref_path(ref, "restart")))

    def destroy_session(self, ref: str, *, forced: bool = False, recursive: bool = False) -> J:
        params = {"forced": forced or None, "recursive": recursive or None}
        return self._json(Call("DELETE", ref_path(ref), params))

    def status_history(self, ref: str) -> J:
        return self._json(Call("GET", ref_path(ref, "status-history")))

    def dependency_graph(self, ref: str) -> J:
        return self._json(Call("GET", ref_path(ref, "dependency-graph")))

    def transit_status(self, session_ids: Iterable[str]) -> J:
        body = {"session_ids": list(session_ids)}
        return self._json(Call("POST", "sessions/transit-status", body=body))

    # --- execution --------------------------------------------------------------------------

    def execute(
        self,
        ref: str,
        code: str = "",
        *,
        mode: str = "query",
        run_id: str | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> J:
        """One execute call: ``{run_id, status, exit_code, console, options, files}``."""
        body = _drop_none({"mode": mode, "code": code, "run_id": run_id, "options": options})
        return self._json(Call("POST", ref_path(ref, "execute"), body=body))

    def kernel_connection(self, ref: str, kernel: str = "main1") -> J:
        """A kernel's connection info (ports on the agent's address and the key), for a
        jupyter_client that talks to the kernel itself (the kernel provisioner)."""
        path = ref_path(ref, "kernels", quote(kernel, safe=""), "connection")
        return self._json(Call("GET", path))

    def interrupt(self, ref: str) -> J:
        return self._json(Call("POST", ref_path(ref, "interrupt")))

    def complete(self, ref: str, code: str, cursor_pos: int | None = None) -> J:
        body = _drop_none({"code": code, "cursor_pos": cursor_pos})
        return self._json(Call("POST", ref_path(ref, "complete"), body=body))

    # --- files ------------------------------------------------------------------------------

    def list_files(self, ref: str, path: str | None = None, *, hidden: bool = False) -> J:
        params = {"path": path, "hidden": hidden or None}
        return self._json(Call("GET", ref_path(ref, "files"), params))

    def move_file(self, ref: str, src: str, dst: str) -> J:
        body = {"src": src, "dst": dst}
        return self._json(Call("POST", ref_path(ref, "files", "move"), body=body))

    def delete_file(self, ref: str, path: str, *, recursive: bool = False) -> J:
        """Delete a file, a symlink, or a folder (a non-empty one with ``recursive``)."""
        params = {"path": path, "recursive": recursive or None}
        return self._json(Call("DELETE", ref_path(ref, "files"), params))

    def make_dir(self, ref: str, path: str) -> J:
        body = {"path": path}
        return self._json(Call("POST", ref_path(ref, "files", "mkdir"), body=body))

    # --- services ---------------------------------------------------------------------------

    def list_services(self, ref: str) -> J:
        return self._json(Call("GET", ref_path(ref, "services")))

    def start_service(
        self,
        ref: str,
        service: str,
        *,
        port: int | None = None,
        arguments: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> J:
        """Start a declared service; the answer carries its URL (with a short-lived token)."""
        body = _drop_none({"port": port, "arguments": arguments, "environ": environ})
        path = ref_path(ref, "services", quote(service, safe=""), "start")
        return self._json(Call("POST", path, body=body))

    def shutdown_service(self, ref: str, service: str) -> J:
        path = ref_path(ref, "services", quote(service, safe=""), "shutdown")
        return self._json(Call("POST", path))

    def direct_access_info(self, ref: str) -> J:
        return self._json(Call("GET", ref_path(ref, "direct-access-info")))

    # --- observability ----------------------------------------------------------------------

    def logs(self, ref: str, *, kernel: str | None = None, tail: int | None = None) -> T:
        """A kernel's output so far, as text."""
        params = {"kernel": kernel, "tail": tail}
        return self._text(Call("GET", ref_path(ref, "logs"), params, kind="text"))

    def follow_logs(self, ref: str, *, kernel: str | None = None, tail: int | None = None) -> S:
        """The log as it grows: an iterator of lines (``?follow=true``), until the kernel ends."""
        params = {"kernel": kernel, "tail": tail, "follow": True}
        return self._lines(Call("GET", ref_path(ref, "logs"), params, kind="text"))

    def usage(self, ref: str) -> J:
        return self._json(Call("GET", ref_path(ref, "usage")))

    def abusing_report(self, ref: str) -> J:
        return self._json(Call("GET", ref_path(ref, "abusing-report")))

    def events(self, *, session: str | None = None, task: str | None = None) -> S:
        """The caller's own events (SSE) as an iterator of ``Event``."""
        params = {"session": session, "task": task}
        return self._events(Call("GET", "events", params, kind="text"))

    # --- commits and tasks ------------------------------------------------------------------

    def commit(self, ref: str, **body: Any) -> J:
        """Commit the session to an image: a background task (``{id, kind, status, ...}``)."""
        return self._json(Call("POST", ref_path(ref, "commit"), body=body))

    def commit_status(self, ref: str) -> J:
        return self._json(Call("GET", ref_path(ref, "commit")))

    def convert_to_image(self, ref: str, image_name: str, **body: Any) -> J:
        body = {"image_name": image_name, **body}
        return self._json(Call("POST", ref_path(ref, "convert-to-image"), body=body))

    def get_task(self, task_id: str) -> J:
        return self._json(Call("GET", "tasks/" + quote(task_id, safe="")))

    def cancel_task(self, task_id: str) -> J:
        return self._json(Call("DELETE", "tasks/" + quote(task_id, safe="")))

    # --- templates --------------------------------------------------------------------------

    def list_templates(self) -> J:
        return self._json(Call("GET", "templates"))

    def create_template(self, body: Mapping[str, Any]) -> J:
        return self._json(Call("POST", "templates", body=dict(body)))

    def get_template(self, template_id: str) -> J:
        return self._json(Call("GET", "templates/" + quote(template_id, safe="")))

    def modify_template(self, template_id: str, **changes: Any) -> J:
        path = "templates/" + quote(template_id, safe="")
        return self._json(Call("PATCH", path, body=changes))

    def delete_template(self, template_id: str) -> J:
        return self._json(Call("DELETE", "templates/" + quote(template_id, safe="")))

    # --- catalog and admin ------------------------------------------------------------------

    def list_images(self) -> J:
        return self._json(Call("GET", "images"))

    def list_agents(self) -> J:
        return self._json(Call("GET", "agents"))

    def add_agent(self, **body: Any) -> J:
        return self._json(Call("POST", "agents", body=body))

    def remove_agent(self, agent_id: str) -> J:
        return self._json(Call("DELETE", "agents/" + quote(agent_id, safe="")))

    def list_scaling_groups(self) -> J:
        return self._json(Call("GET", "scaling-groups"))

    def create_scaling_group(self, **body: Any) -> J:
        return self._json(Call("POST", "scaling-groups", body=body))

    def list_keypairs(self) -> J:
        return self._json(Call("GET", "keypairs"))

    def create_keypair(
        self, user: str, *, is_admin: bool | None = None, resource_policy: str | None = None
    ) -> J:
        """A new keypair: the answer is the only time its ``secret_key`` is shown."""
        body = _drop_none({"user": user, "is_admin": is_admin, "resource_policy": resource_policy})
        return self._json(Call("POST", "keypairs", body=body))

    def revoke_keypair(self, access_key: str) -> J:
        return self._json(Call("DELETE", "keypairs/" + quote(access_key, safe="")))

    def list_resource_policies(self) -> J:
        return self._json(Call("GET", "resource-policies"))

    def create_resource_policy(self, **body: Any) -> J:
        return self._json(Call("POST", "resource-policies", body=body))

    def get_resource_policy(self, name: str) -> J:
        return self._json(Call("GET", "resource-policies/" + quote(name, safe="")))

    def modify_resource_policy(self, name: str, **changes: Any) -> J:
        path = "resource-policies/" + quote(name, safe="")
        return self._json(Call("PATCH", path, body=changes))

    def audit_log(self, **params: Any) -> J:
        return self._json(Call("GET", "audit-log", params))

    def openapi(self) -> J:
        return self._json(Call("GET", "openapi.json"))


# --- the blocking client --------------------------------------------------------------------


class SessionsClient(_Api[Any, str, Iterator[Any]]):
    """Blocking client (``httpx.Client``); needs no event loop, so it works inside a kernel.

    ``SessionsClient()`` finds the server itself; ``SessionsClient(url, token=...)`` or
    ``keypair="AK:SK"`` names it."""

    def _setup(self) -> None:
        self.server = self.server or find_server(*self._where)
        self._http = httpx.Client(timeout=self.timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SessionsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, call: Call, **extra: Any) -> httpx.Response:
        assert self.server is not None
        try:
            return self._http.request(**call.request_args(self.server), **extra)
        except httpx.TransportError as error:
            raise ServerUnreachable(f"{self.server.url} did not answer: {error}") from None

    def _json(self, call: Call) -> Any:
        response = self._send(call)
        return parse_answer(call, response.status_code, response.content)

    def _text(self, call: Call) -> str:
        return str(self._json(call))  # kind "text": always a str, "" for an empty body

    def _multipart(self, call: Call, items: Iterable[Upload]) -> Any:
        with contextlib.ExitStack() as stack:
            response = self._send(call, files=upload_parts(items, stack))
        return parse_answer(call, response.status_code, response.content)

    @contextlib.contextmanager
    def _stream(self, call: Call) -> Iterator[httpx.Response]:
        assert self.server is not None
        try:
            with self._http.stream(
                **call.request_args(self.server), timeout=httpx.Timeout(self.timeout, read=None)
            ) as response:
                if response.status_code >= 400:
                    check_answer(response.status_code, response.read())
                yield response
        except httpx.TransportError as error:
            raise ServerUnreachable(f"{self.server.url} did not answer: {error}") from None

    def _save(self, call: Call, target: Path) -> Path:
        with self._stream(call) as response, target.open("wb") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
        return target

    def _lines(self, call: Call) -> Iterator[str]:
        with self._stream(call) as response:
            yield from response.iter_lines()

    def _events(self, call: Call) -> Iterator[Event]:
        parser = SSEParser()
        for line in self._lines(call):
            if (event := parser.feed(line)) is not None:
                yield event

    def _poll(self, fetch: Callable[[], Any], wanted: frozenset[str], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not _reached(item := fetch(), wanted, deadline):
            time.sleep(POLL_INTERVAL)
        return item

    def run(
        self,
        ref: str,
        code: str,
        *,
        on_output: OutputCallback | None = None,
        on_input: InputCallback | None = ask_input,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run code with its output streamed (WebSocket): ``on_output(type, data)`` per console
        item; the result has the whole console. Ctrl-C (KeyboardInterrupt) closes the socket,
        which interrupts the run, and is raised again."""
        import websocket

        assert self.server is not None
        headers = [f"{k}: {v}" for k, v in self.server.headers().items()]
        url = self.server.ws_url(ref_path(ref, "execute", "stream"))
        try:
            ws = websocket.create_connection(url, header=headers, timeout=None)
        except websocket.WebSocketBadStatusException as error:
            raise error_from_answer(error.status_code, _json_or_text(error.resp_body)) from None
        except OSError as error:
            raise ServerUnreachable(f"{self.server.url} did not answer: {error}") from None
        run = StreamedRun(on_output, on_input)
        try:
            ws.send(run.request(code, options))
            while True:
                reply = run.feed(ws.recv())
                if isinstance(reply, dict):
                    return reply
                if reply is not None:
                    ws.send(reply)
        finally:
            ws.close()


# --- the asyncio client ---------------------------------------------------------------------


class AsyncSessionsClient(_Api[Any, Any, AsyncIterator[Any]]):
    """The asyncio client (``httpx.AsyncClient``): every action is awaited (``await
    client.get_session(ref)``); streams are async iterators. The server is found on first use,
    off the event loop."""

    def _setup(self) -> None:
        self._http = httpx.AsyncClient(timeout=self.timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncSessionsClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def connect(self) -> ServerInfo:
        """Find the server now (runtime files are read in a thread)."""
        if self.server is None:
            self.server = await asyncio.to_thread(find_server, *self._where)
        return self.server

    async def _send(self, call: Call, **extra: Any) -> httpx.Response:
        server = await self.connect()
        try:
            return await self._http.request(**call.request_args(server), **extra)
        except httpx.TransportError as error:
            raise ServerUnreachable(f"{server.url} did not answer: {error}") from None

    async def _json(self, call: Call) -> Any:
        response = await self._send(call)
        return parse_answer(call, response.status_code, response.content)

    async def _text(self, call: Call) -> str:
        return str(await self._json(call))

    async def _multipart(self, call: Call, items: Iterable[Upload]) -> Any:
        with contextlib.ExitStack() as stack:
            response = await self._send(call, files=upload_parts(items, stack))
        return parse_answer(call, response.status_code, response.content)

    @contextlib.asynccontextmanager
    async def _stream(self, call: Call) -> AsyncIterator[httpx.Response]:
        server = await self.connect()
        try:
            async with self._http.stream(
                **call.request_args(server), timeout=httpx.Timeout(self.timeout, read=None)
            ) as response:
                if response.status_code >= 400:
                    check_answer(response.status_code, await response.aread())
                yield response
        except httpx.TransportError as error:
            raise ServerUnreachable(f"{server.url} did not answer: {error}") from None

    async def _save(self, call: Call, target: Path) -> Path:
        async with self._stream(call) as response:
            with target.open("wb") as out:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
        return target

    async def _lines(self, call: Call) -> AsyncIterator[str]:
        async with self._stream(call) as response:
            async for line in response.aiter_lines():
                yield line

    async def _events(self, call: Call) -> AsyncIterator[Event]:
        parser = SSEParser()
        async for line in self._lines(call):
            if (event := parser.feed(line)) is not None:
                yield event

    async def _poll(self, fetch: Callable[[], Any], wanted: frozenset[str], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            item = await fetch()
            if _reached(item, wanted, deadline):
                return item
            await asyncio.sleep(POLL_INTERVAL)

    async def run(
        self,
        ref: str,
        code: str,
        *,
        on_output: OutputCallback | None = None,
        on_input: InputCallback | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run code with its output streamed (WebSocket); cancelling the task closes the
        socket, which interrupts the run."""
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.websocket import websocket_connect

        server = await self.connect()
        url = server.ws_url(ref_path(ref, "execute", "stream"))
        try:
            ws = await websocket_connect(HTTPRequest(url, headers=server.headers()))
        except HTTPClientError as error:
            body = error.response.body if error.response is not None else b""
            raise error_from_answer(error.code, _json_or_text(body)) from None
        except OSError as error:
            raise ServerUnreachable(f"{server.url} did not answer: {error}") from None
        run = StreamedRun(on_output, on_input)
        try:
            await ws.write_message(run.request(code, options))
            while True:
                reply = run.feed(await ws.read_message())
                if isinstance(reply, dict):
                    return reply
                if reply is not None:
                    await ws.write_message(reply)
        finally:
            ws.close()


# --- small shared helpers -------------------------------------------------------------------


def _reached(item: Mapping[str, Any], wanted: frozenset[str], deadline: float) -> bool:
    """Has ``item["status"]`` reached ``wanted``? Raises Timeout once the deadline has passed."""
    if item.get("status") in wanted:
        return True
    if time.monotonic() > deadline:
        raise errors.Timeout(
            f"still {item.get('status')} (waited for {', '.join(sorted(wanted))})",
            id=item.get("id"),
        )
    return False


def _answer(on_input: InputCallback | None, frame: Mapping[str, Any]) -> str:
    options = frame.get("options") or {}
    if on_input is None:
        raise errors.InvalidRequest("the code asked for input and no on_input was given")
    return on_input(str(options.get("prompt", "")), bool(options.get("is_password")))


def _download_target(path: str, dest: str | os.PathLike[str] | None) -> Path:
    name = Path(path).name or "download"
    if dest is None:
        return Path(name)
    target = Path(dest)
    return target / name if target.is_dir() else target


def _json_or_text(raw: bytes | str | None) -> Any:
    if not raw:
        return ""
    try:
        return json.loads(raw)
    except ValueError:
        return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")


__all__ = [
    "AsyncSessionsClient",
    "Call",
    "Event",
    "ServerError",
    "ServerInfo",
    "ServerUnreachable",
    "SessionsClient",
    "error_from_answer",
    "find_server",
    "running_servers",
]
