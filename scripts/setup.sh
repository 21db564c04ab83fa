#!/usr/bin/env bash
# Idempotent set-up shared by scripts/run.sh and scripts/test.sh:
#   1. a virtualenv (.venv) with jupyter_sessions installed editable, with its test and dev tools
#      (the install builds the JupyterLab panel with Node, installed from Debian if missing);
#   2. PostgreSQL's server binaries from Debian (postgresql), for the tests' second store: the
#      tests start and stop their own server, so no cluster is created or started here;
#   3. a Docker engine: installed from Debian (docker.io) and started when none answers
#      (needs root; with --optional, a machine where that fails goes on without Docker);
#   4. the default kernel image, built offline (debootstrap) unless its tag is present;
#   5. Chromium from Debian, for the browser tests (Playwright drives it: its own download fails),
#      and Debian's docker-registry, which the image-push tests start on a loopback port.
set -euo pipefail
cd "$(dirname "$0")/.."
optional_docker=0
[ "${1:-}" = "--optional-docker" ] && optional_docker=1

say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
# The editable install builds the JupyterLab panel (labextension/, TypeScript) with Node.
if ! command -v node >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  say "installing Node.js from Debian (builds the JupyterLab panel)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
panel_stale() {
  [ ! -f jupyter_sessions/labextension/static/style.js ] || [ -n "$(find labextension/src \
    labextension/style labextension/schema labextension/package.json -newer .venv/.installed \
    -print -quit 2>/dev/null)" ]
}
if ! .venv/bin/python -c "import jupyter_sessions, psycopg, pytest_jupyter, ruff, mypy, jupyterlab" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ] || panel_stale; then
  say "installing jupyter_sessions and its dev tools into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[dev]"
  touch .venv/.installed
fi

have_initdb() { compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }

if ! have_initdb; then
  if [ "$(id -u)" = 0 ]; then
    say "installing PostgreSQL (postgresql) from Debian, without a default cluster"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql-common >/dev/null
    # The package would otherwise create (not start: no init here) a 'main' cluster nobody uses.
    sed -ri 's/^#?[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf
    apt-get install -y -qq postgresql >/dev/null
    have_initdb || { say "postgresql installed but no initdb found"; exit 1; }
  else
    say "PostgreSQL is not installed and not root: its tests will fail (apt-get install postgresql)"
  fi
fi

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    say "installing Chromium from Debian (browser tests)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    say "Chromium is not installed and not root: the browser tests will fail (apt-get install chromium)"
  fi
fi

if ! command -v docker-registry >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  say "installing docker-registry from Debian (image push tests)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry >/dev/null
fi

docker_answers() { docker info >/dev/null 2>&1; }

start_docker() {
  if ! command -v dockerd >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { say "no Docker engine and not root: cannot install one"; return 1; }
    say "installing Docker (docker.io) and debootstrap from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io debootstrap iptables >/dev/null
  fi
  if ! command -v debootstrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  if ! docker_answers; then
    [ "$(id -u)" = 0 ] || { say "Docker engine not running and not root: cannot start it"; return 1; }
    say "starting dockerd (log: /var/log/jupyter-sessions-dockerd.log)"
    # No systemd here. Our own config file (so a host's daemon.json can't conflict): the userland
    # proxy stays off (kernel traffic is a loopback DNAT, not a process hop), and the address pool
    # holds 1024 /24 networks (clusters get one each).
    mkdir -p /etc/jupyter-sessions
    cat >/etc/jupyter-sessions/dockerd.json <<'JSON'
{"userland-proxy": false, "default-address-pools": [{"base": "10.200.0.0/14", "size": 24}]}
JSON
    nohup dockerd --config-file /etc/jupyter-sessions/dockerd.json \
      >/var/log/jupyter-sessions-dockerd.log 2>&1 &
    for _ in $(seq 60); do docker_answers && break; sleep 1; done
    docker_answers || { say "dockerd did not come up:"; tail -20 /var/log/jupyter-sessions-dockerd.log >&2; return 1; }
  fi
}

if start_docker; then
  tag=$(.venv/bin/jupyter-sessions image-tag)
  if docker image inspect "$tag" >/dev/null 2>&1; then
    say "kernel image $tag present"
  else
    say "building kernel image $tag (a few minutes, once)"
    .venv/bin/jupyter-sessions build-image >/dev/null
  fi
elif [ "$optional_docker" = 1 ]; then
  say "no Docker engine: sessions will not be available (see README)"
else
  say "a Docker engine is required here"; exit 1
fi
