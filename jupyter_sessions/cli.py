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
    args = parser.parse_args(argv)

    if args.command == "build-image":
        from .images import main as build_main

        return build_main(["--force"] if args.force else [])
    if args.command == "image-tag":
        from .images import image_tag

        print(image_tag())
        return 0
    return 2  # pragma: no cover - argparse refuses unknown commands


if __name__ == "__main__":
    sys.exit(main())
