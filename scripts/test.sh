#!/usr/bin/env bash
# The whole test suite, from a bare machine: set-up (venv, Docker engine, kernel image), lint,
# type check, then every test — Docker tests included (they are never skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/setup.sh
echo "[test] ruff" >&2
.venv/bin/ruff check jupyter_sessions tests benchmarks
.venv/bin/ruff format --check jupyter_sessions tests benchmarks
echo "[test] mypy" >&2
.venv/bin/mypy
echo "[test] pytest" >&2
.venv/bin/python -m pytest -p no:cacheprovider -q "$@"
echo "[test] all green in $(( $(date +%s) - start )) s" >&2
