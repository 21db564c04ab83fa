#!/usr/bin/env bash
# Run JupyterLab with jupyter_sessions: the same idempotent set-up as the tests where the machine
# allows it (a Docker engine, the kernel image), then the server on 127.0.0.1.
# Extra arguments go to `jupyter lab` (e.g. --port=9999).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --optional-docker
extra=()
[ "$(id -u)" = 0 ] && extra+=(--allow-root)
exec .venv/bin/jupyter lab --ip=127.0.0.1 --no-browser "${extra[@]}" "$@"
