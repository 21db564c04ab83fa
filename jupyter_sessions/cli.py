"""The `jupyter-sessions` (also `jupyter sessions`) command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jupyter-sessions", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser(
        "build-image",
        help="Build the default kernel image without a registry (debootstrap; root needed)",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if present")
    commands.add_parser("image-tag", help="Print the default image's tag (a hash of its recipe)")
    commands.add_parser("config-docs", help="Print every SessionsApp setting as Markdown")
    args = parser.parse_args(argv)

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
    return 2  # pragma: no cover - argparse refuses unknown commands


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
