"""IPython magics (``%load_ext jupyter_sessions``): sessions from a notebook.

``%sessions`` lists them; ``%session create|ls|upload|download|logs|services|destroy|commit|
connect`` act on them; ``%%session NAME`` runs the cell in the session, its output streamed here
as it happens (the execute WebSocket), and Ctrl-C (the notebook's interrupt) interrupts the run
there. Every mistake is a ``UsageError`` with a one-line message, never a traceback of ours.
The magics use the blocking client, which needs no event loop: a kernel's cell runs inside one.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.display import display

from .cli import SESSION_COLUMNS, add_session_commands, format_table
from .client import SessionsClient
from .errors import SessionsError


class _Done(Exception):
    """argparse asked to exit (``--help`` was printed): end the magic quietly."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a mistake as a UsageError instead of exiting the kernel."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError(message or f"{self.prog}: error")
        raise _Done


class CellFailed(Exception):
    """The cell raised in the session (its traceback was already shown, as the session's)."""

    def __init__(self, name: str, result: Mapping[str, Any]) -> None:
        status, code = result.get("status"), result.get("exit_code")
        what = "ran out of time" if status == "exec-timeout" else f"failed (exit code {code})"
        super().__init__(f"the cell {what} in session {name}")

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback of the magic's own frames."""
        return [f"{type(self).__name__}: {self}"]


def _parser() -> _Parser:
    parser = _Parser(prog="%session", description="Act on compute sessions.", add_help=True)
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    add_session_commands(commands)  # create, upload, download, logs: as the CLI has them
    listing = commands.add_parser("ls", help="list files in the session")
    listing.add_argument("ref")
    listing.add_argument("path", nargs="?")
    listing.add_argument("--hidden", action="store_true")
    services = commands.add_parser("services", help="list the session's services")
    services.add_argument("ref")
    destroy = commands.add_parser("destroy", help="destroy a session")
    destroy.add_argument("ref")
    destroy.add_argument("--forced", action="store_true")
    destroy.add_argument("--recursive", action="store_true")
    commit = commands.add_parser("commit", help="commit the session to an image (a task)")
    commit.add_argument("ref")
    commit.add_argument("--image", help="convert to a named image instead")
    commit.add_argument("--wait", action="store_true", help="wait for the task to end")
    connect = commands.add_parser("connect", help="talk to another server (URL and token)")
    connect.add_argument("url")
    connect.add_argument("--token")
    connect.add_argument("--keypair", help="ACCESS_KEY:SECRET_KEY")
    return parser


def show_output(kind: str, data: Any) -> None:
    """Show one console item of a session here, as if the cell had run locally."""
    if kind == "stdout":
        sys.stdout.write(str(data))
        sys.stdout.flush()
    elif kind in ("stderr", "log"):
        sys.stderr.write(str(data))
        sys.stderr.flush()
    elif kind == "media" and isinstance(data, Mapping):
        display(dict(data), raw=True)
    elif kind == "html":
        display({"text/html": str(data)}, raw=True)
    else:
        sys.stdout.write(f"[{kind}] {data}\n")


@magics_class
class SessionMagics(Magics):
    """``%sessions``, ``%session ...`` and ``%%session NAME``."""

    def __init__(self, shell: Any = None, client: SessionsClient | None = None) -> None:
        super().__init__(shell)
        self._client = client

    @property
    def client(self) -> SessionsClient:
        """The server is found on first use (env vars, runtime files), then kept."""
        if self._client is None:
            self._client = _call(SessionsClient)
        return self._client

    @line_magic
    def sessions(self, line: str) -> None:
        """List your sessions: ``%sessions [MATCH]``."""
        args = shlex.split(line)
        if len(args) > 1:
            raise UsageError("usage: %sessions [MATCH]")
        answer = _call(self.client.list_sessions, args[0] if args else None)
        if not answer["sessions"]:
            print("no sessions")
            return
        print(format_table(answer["sessions"], SESSION_COLUMNS))

    @line_cell_magic
    def session(self, line: str, cell: str | None = None) -> Any:
        """``%%session NAME`` runs the cell in the session; ``%session --help`` for the rest."""
        if cell is not None:
            return self._run_cell(line, cell)
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise UsageError(f"%session: {error}") from None
        if not words:
            raise UsageError(
                "usage: %session create|ls|upload|download|logs|services|destroy|commit|connect"
                " ... (%session --help), or %%session NAME as a cell magic"
            )
        try:
            args = _parser().parse_args(words)
        except _Done:
            return None
        handler: Callable[[argparse.Namespace], Any] = getattr(self, f"_do_{args.command}")
        return handler(args)

    # --- the cell magic -----------------------------------------------------------------------

    def _run_cell(self, line: str, cell: str) -> None:
        words = shlex.split(line)
        if len(words) != 1:
            raise UsageError("usage: %%session NAME (the name or id of a running session)")
        name = words[0]
        if not cell.strip():
            return
        result = _call(self.client.run, name, cell, on_output=show_output)
        if result.get("status") != "finished" or result.get("exit_code"):
            raise CellFailed(name, result)

    # --- subcommands --------------------------------------------------------------------------

    def _do_create(self, args: argparse.Namespace) -> None:
        resources = {
            key: value for key, value in (("cpu", args.cpu), ("mem", args.mem)) if value is not None
        }
        fields: dict[str, Any] = {"max_wait_seconds": args.wait}
        if args.name:
            fields["name"] = args.name
        if resources:
            fields["resources"] = resources
        if args.template:
            if args.image:
                fields["image"] = args.image
            session = _call(self.client.create_from_template, args.template, **fields)
        elif not args.image:
            raise UsageError("usage: %session create IMAGE [--name --cpu --mem] or --template ID")
        else:
            session = _call(self.client.create_session, args.image, **fields)
        info = f" ({session['status_info']})" if session.get("status_info") else ""
        print(f"session {session['name']} ({session['id']}) is {session['status']}{info}")

    def _do_ls(self, args: argparse.Namespace) -> None:
        answer = _call(self.client.list_files, args.ref, args.path, hidden=args.hidden)
        print(format_table(answer["files"], ["name", "type", "size", "mode", "mtime"]))

    def _do_upload(self, args: argparse.Namespace) -> None:
        answer = _call(
            self.client.upload, args.ref, args.paths, args.dest, overwrite=args.overwrite
        )
        print(format_table(answer["files"], ["path", "size", "status"]))

    def _do_download(self, args: argparse.Namespace) -> None:
        target = _call(self.client.download, args.ref, args.path, args.dest)
        print(f"saved {args.path} to {target}")

    def _do_logs(self, args: argparse.Namespace) -> None:
        if not args.follow:
            text = _call(self.client.logs, args.ref, kernel=args.kernel, tail=args.tail)
            sys.stdout.write(text)
            return
        try:
            for line in _call(
                self.client.follow_logs, args.ref, kernel=args.kernel, tail=args.tail
            ):
                print(line)
        except SessionsError as error:
            raise UsageError(error.message) from None
        except KeyboardInterrupt:
            return

    def _do_services(self, args: argparse.Namespace) -> None:
        answer = _call(self.client.list_services, args.ref)
        rows = answer.get("services", []) if isinstance(answer, Mapping) else answer
        if not rows:
            print("no services")
            return
        print(format_table(rows, ["name", "protocol", "port", "status", "url"]))

    def _do_destroy(self, args: argparse.Namespace) -> None:
        session = _call(
            self.client.destroy_session, args.ref, forced=args.forced, recursive=args.recursive
        )
        print(f"session {session['name']} is {session['status']}")

    def _do_commit(self, args: argparse.Namespace) -> Any:
        if args.image:
            task = _call(self.client.convert_to_image, args.ref, args.image)
        else:
            task = _call(self.client.commit, args.ref)
        if args.wait and isinstance(task, Mapping) and task.get("id"):
            task = _call(self.client.wait_task, str(task["id"]))
        print(f"task {task.get('id')}: {task.get('status')}")
        if task.get("status") == "failed":
            raise UsageError(f"the commit failed: {task.get('error')}")
        return task

    def _do_connect(self, args: argparse.Namespace) -> None:
        client = _call(SessionsClient, args.url, token=args.token, keypair=args.keypair)
        _call(client.list_sessions, limit=1)
        if self._client is not None:
            self._client.close()
        self._client = client
        print(f"connected to {client.server.url if client.server else args.url}")


def _call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the client; its errors become one-line UsageErrors (the server's own message)."""
    try:
        return function(*args, **kwargs)
    except SessionsError as error:
        raise UsageError(error.message) from None


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(SessionMagics)
