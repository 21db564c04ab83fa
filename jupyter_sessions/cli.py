"""The `jupyter-sessions` command line, also `jupyter sessions` (Jupyter finds any
`jupyter-<name>` executable on PATH): sessions from a terminal, through the REST client, and the
server's own chores (build-image, image-tag, config-docs).

The server is found as the client finds it (--url/--token/--keypair, else $JUPYTER_SESSIONS_URL
and $JUPYTER_SESSIONS_TOKEN or $JUPYTER_SESSIONS_KEYPAIR, else the running Jupyter servers' runtime
files). Errors print the server's message and exit 1; `exec` exits with the code's exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import SessionsClient

SESSION_COLUMNS = ["name", "status", "image", "id", "created_at"]


def format_table(rows: Iterable[Mapping[str, Any]], columns: list[str]) -> str:
    """A plain text table (also used by the magics)."""
    cells = [
        [str(row.get(col) if row.get(col) is not None else "") for col in columns] for row in rows
    ]
    widths = [max([len(col), *(len(row[i]) for row in cells)]) for i, col in enumerate(columns)]
    lines = ["  ".join(col.upper().ljust(w) for col, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jupyter-sessions",
        description="Compute sessions from a terminal (also `jupyter sessions`).",
    )
    server = parser.add_argument_group("server (default: found by itself)")
    server.add_argument("--url", help="the Jupyter server's base URL")
    server.add_argument("--token", help="its token")
    server.add_argument("--keypair", help="ACCESS_KEY:SECRET_KEY instead of a token")
    parser.add_argument("--json", action="store_true", help="print the API's JSON answers")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list your sessions")
    listing.add_argument("match", nargs="?", help="a name or id prefix")
    listing.add_argument("--status", help="only this status (e.g. RUNNING)")

    create = add_session_commands(commands)["create"]
    create.add_argument("--type", choices=["interactive", "batch"])
    create.add_argument("--startup-command", help="a batch session's command")
    create.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    create.add_argument("--enqueue-only", action="store_true", help="answer at once (PENDING)")

    execute = commands.add_parser("exec", help="run code in a session, output streamed")
    execute.add_argument("ref", help="a session's name or id")
    execute.add_argument("code", nargs="?", help="the code (default: read from stdin)")
    execute.add_argument("-f", "--file", help="run this file's code")
    execute.add_argument("--timeout", type=float, help="seconds before the run is interrupted")

    destroy = commands.add_parser("destroy", help="destroy sessions")
    destroy.add_argument("refs", nargs="+")
    destroy.add_argument("--forced", action="store_true")
    destroy.add_argument("--recursive", action="store_true")
    destroy.add_argument("--wait", action="store_true", help="wait until each has ended")

    build = commands.add_parser(
        "build-image",
        help="Build the default kernel image without a registry (debootstrap; root needed)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if present")
    commands.add_parser("image-tag", help="Print the default image's tag (a hash of its recipe)")
    commands.add_parser("config-docs", help="Print every SessionsApp setting as Markdown")
    return parser


def add_session_commands(commands: Any) -> dict[str, argparse.ArgumentParser]:
    """The subcommands the CLI and the ``%session`` magic share: same words, same options."""
    create = commands.add_parser("create", help="create a session (waits until it runs)")
    create.add_argument("image", nargs="?", help="the image (omit with --template)")
    create.add_argument("--name")
    create.add_argument("--cpu", type=float)
    create.add_argument("--mem", help="memory, e.g. 2g")
    create.add_argument("--template", help="a template id")
    create.add_argument("--wait", type=float, default=60.0, help="seconds to wait for RUNNING")

    upload = commands.add_parser("upload", help="upload files or folders into a session")
    upload.add_argument("ref")
    upload.add_argument("paths", nargs="+")
    upload.add_argument("--to", dest="dest", help="a folder in the session")
    upload.add_argument("--overwrite", action="store_true")

    download = commands.add_parser("download", help="download a file from a session")
    download.add_argument("ref")
    download.add_argument("path")
    download.add_argument("dest", nargs="?", help="a file or folder here (default: .)")

    logs = commands.add_parser("logs", help="print a kernel's log")
    logs.add_argument("ref")
    logs.add_argument("--kernel")
    logs.add_argument("--tail", type=int)
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing (Ctrl-C stops)")
    return {"create": create, "upload": upload, "download": download, "logs": logs}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    if args.command == "build-image":
        from .images import main as build_main

        return build_main(["--force"] if args.force else [])
    if args.command == "image-tag":
        from .images import image_tag

        print(image_tag())
        return 0
    if args.command == "config-docs":
        print(config_docs(), end="")
        return 0

    from .client import SessionsClient
    from .errors import SessionsError

    command: Callable[[SessionsClient, argparse.Namespace], int] = COMMANDS[args.command]
    try:
        with SessionsClient(args.url, token=args.token, keypair=args.keypair) as client:
            return command(client, args)
    except SessionsError as error:
        print(f"jupyter-sessions {args.command}: {error.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _print(args: argparse.Namespace, answer: Any, text: str) -> None:
    print(json.dumps(answer, indent=2) if args.json else text)


def _cmd_list(client: SessionsClient, args: argparse.Namespace) -> int:
    answer = client.list_sessions(args.match, args.status)
    sessions = answer["sessions"]
    _print(args, answer, format_table(sessions, SESSION_COLUMNS) if sessions else "no sessions")
    return 0


def _cmd_create(client: SessionsClient, args: argparse.Namespace) -> int:
    from .errors import InvalidRequest

    environ = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidRequest(f"--env takes NAME=VALUE, not {item!r}")
        environ[name] = value
    resources = {k: v for k, v in (("cpu", args.cpu), ("mem", args.mem)) if v is not None}
    fields: dict[str, Any] = {
        "name": args.name,
        "resources": resources or None,
        "type": args.type,
        "startup_command": args.startup_command,
        "environ": environ or None,
        "max_wait_seconds": args.wait,
        "enqueue_only": args.enqueue_only or None,
    }
    fields = {key: value for key, value in fields.items() if value is not None}
    if args.template:
        if args.image:
            fields["image"] = args.image
        session = client.create_from_template(args.template, **fields)
    elif args.image:
        session = client.create_session(args.image, **fields)
    else:
        raise InvalidRequest("name an IMAGE, or a --template")
    info = f" ({session['status_info']})" if session.get("status_info") else ""
    _print(args, session, f"{session['name']} {session['id']} {session['status']}{info}")
    return 0 if session["status"] != "ERROR" else 1


def _cmd_exec(client: SessionsClient, args: argparse.Namespace) -> int:
    if args.file:
        with open(args.file, encoding="utf-8") as source:
            code = source.read()
    elif args.code is not None:
        code = args.code
    else:
        code = sys.stdin.read()
    options = {"timeout": args.timeout} if args.timeout else None

    def show(kind: str, data: Any) -> None:
        if args.json:
            return
        stream = sys.stdout if kind == "stdout" else sys.stderr
        if kind == "media" and isinstance(data, dict):
            data = str(data.get("text/plain", "")) + "\n"
            stream = sys.stdout
        stream.write(str(data))
        stream.flush()

    result = client.run(args.ref, code, on_output=show, options=options)
    if args.json:
        print(json.dumps(result, indent=2))
    if result.get("status") == "exec-timeout":
        print("jupyter-sessions exec: the run ran out of time", file=sys.stderr)
        return 124
    return int(result.get("exit_code") or 0)


def _cmd_upload(client: SessionsClient, args: argparse.Namespace) -> int:
    answer = client.upload(args.ref, args.paths, args.dest, overwrite=args.overwrite)
    _print(args, answer, format_table(answer.get("files", []), ["path", "size", "status"]))
    return 0


def _cmd_download(client: SessionsClient, args: argparse.Namespace) -> int:
    target = client.download(args.ref, args.path, args.dest)
    _print(args, {"path": args.path, "saved": str(target)}, f"{args.path} → {target}")
    return 0


def _cmd_logs(client: SessionsClient, args: argparse.Namespace) -> int:
    if not args.follow:
        sys.stdout.write(client.logs(args.ref, kernel=args.kernel, tail=args.tail))
        return 0
    for line in client.follow_logs(args.ref, kernel=args.kernel, tail=args.tail):
        print(line, flush=True)
    return 0


def _cmd_destroy(client: SessionsClient, args: argparse.Namespace) -> int:
    answers = []
    for ref in args.refs:
        session = client.destroy_session(ref, forced=args.forced, recursive=args.recursive)
        if args.wait:
            session = client.wait_for(session["id"], {"TERMINATED", "CANCELLED", "ERROR"})
        answers.append(session)
        if not args.json:
            print(f"{session['name']} {session['id']} {session['status']}")
    if args.json:
        print(json.dumps(answers, indent=2))
    return 0


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "list": _cmd_list,
    "create": _cmd_create,
    "exec": _cmd_exec,
    "upload": _cmd_upload,
    "download": _cmd_download,
    "logs": _cmd_logs,
    "destroy": _cmd_destroy,
}


def config_docs() -> str:
    """docs/configuration.md, made from the traitlets themselves (a test keeps the file current)."""
    import inspect

    from .app import SessionsApp

    lines = [
        "# Configuration",
        "",
        "Every setting of `SessionsApp`, made by `jupyter-sessions config-docs` from the code.",
        "Set them in `jupyter_server_config.py` (`c.SessionsApp.<name> = ...`) or on the command",
        "line (`--SessionsApp.<name>=...`).",
        "",
    ]
    traits = SessionsApp.class_own_traits(config=True)
    for name in sorted(traits):
        trait = traits[name]
        default = trait.default_value_repr()
        lines += [
            f"## `{name}`",
            "",
            f"Type: `{type(trait).__name__}`. Default: `{default}`.",
            "",
            inspect.cleandoc(trait.help or "").replace("\n", " ") if trait.help else "",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
