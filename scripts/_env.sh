# Shared by scripts/demo and scripts/test: build (once) and reuse the two virtual environments.
#   .venv/                                  the main environment, in the checkout
#   $SWIFTREG_CACHE/venvs/oracle-<hash>/    ms-swift's environment, outside the checkout, keyed by
#                                           requirements/oracle.txt so every clone reuses it
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${SWIFTREG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/swiftreg}
BASE_PYTHON=${SWIFTREG_BASE_PYTHON:-$(command -v python3.11 || command -v python3)}
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# pip, quietly: its output goes to a log that is shown only when the install fails.
pip_install() {
  local python=$1; shift
  local log
  log=$(mktemp)
  if ! "$python" -m pip install -q "$@" >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -n 40 >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

fingerprint() { cat "$@" | sha256sum | cut -c1-16; }

ensure_main_env() {
  local stamp_value
  stamp_value=$(fingerprint "$ROOT/requirements/dev.txt" "$ROOT/pyproject.toml")
  if [ "$(cat "$ROOT/.venv/.swiftreg-stamp" 2>/dev/null)" != "$stamp_value" ]; then
    say "building .venv (main environment)"
    # venvs are not relocatable: build it at its final path.
    rm -rf "$ROOT/.venv"
    "$BASE_PYTHON" -m venv "$ROOT/.venv"
    pip_install "$ROOT/.venv/bin/python" --upgrade pip >/dev/null
    pip_install "$ROOT/.venv/bin/python" "torch==2.13.0"
    pip_install "$ROOT/.venv/bin/python" -r "$ROOT/requirements/dev.txt"
    pip_install "$ROOT/.venv/bin/python" --no-deps -e "$ROOT"
    echo "$stamp_value" > "$ROOT/.venv/.swiftreg-stamp"
  fi
  export PATH="$ROOT/.venv/bin:$PATH"
}

ensure_oracle_env() {
  local dir="$CACHE/venvs/oracle-$(fingerprint "$ROOT/requirements/oracle.txt")"
  if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.swiftreg-ready" ]; then
    say "building the ms-swift oracle environment in $dir (once per requirements/oracle.txt)"
    mkdir -p "$CACHE/venvs"
    rm -rf "$dir"
    "$BASE_PYTHON" -m venv "$dir"
    pip_install "$dir/bin/python" --upgrade pip >/dev/null
    pip_install "$dir/bin/python" "torch==2.13.0"
    pip_install "$dir/bin/python" -r "$ROOT/requirements/oracle.txt"
    "$dir/bin/python" -c "import swift.tuners, peft; assert peft.__version__ == '0.18.0', peft.__version__"
    touch "$dir/.swiftreg-ready"
  fi
  export SWIFTREG_SWIFT_PYTHON="$dir/bin/python"
}

# A real PostgreSQL for the registry tests: use SWIFTREG_TEST_DATABASE_URL if given, else the local
# server on 127.0.0.1:5432 (started, or installed from Debian's packages, when absent). Never skipped:
# if no server can be had, this fails and so does the suite.
ensure_postgres() {
  if [ -n "${SWIFTREG_TEST_DATABASE_URL:-}" ]; then return; fi
  local url="postgresql://postgres@127.0.0.1:5432/postgres"
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
      say "installing PostgreSQL from Debian's packages"
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    local version
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$version" ]; then
      echo "no PostgreSQL cluster found after installation" >&2; return 1
    fi
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || pg_ctlcluster "$version" main start
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
  if ! psql "$url" -tAc "select 1" >/dev/null 2>&1; then
    # A fresh Debian cluster allows only peer login for postgres: trust local TCP for the tests.
    local hba
    hba=$(su postgres -c "psql -tAc 'show hba_file'" 2>/dev/null || true)
    if [ -n "$hba" ]; then
      sed -i -E 's/^(host\s+all\s+all\s+127\.0\.0\.1\/32\s+)\S+/\1trust/' "$hba"
      su postgres -c "psql -tAc 'select pg_reload_conf()'" >/dev/null
    fi
  fi
  psql "$url" -tAc "select 1" >/dev/null || { echo "PostgreSQL at $url is unreachable" >&2; return 1; }
  export SWIFTREG_TEST_DATABASE_URL="$url"
}
