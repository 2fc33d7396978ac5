# Shared set-up for scripts/run and scripts/test. Sourced, not run.
# Installs what is missing (Debian/Ubuntu packages, a virtualenv, the Python packages), prepares
# ./var/ (SoftHSM token, secrets, database) and is safe to run any number of times.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export KMS_VAR_DIR="${KMS_VAR_DIR:-$ROOT/var}"
VAR="$KMS_VAR_DIR"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31mERROR: %s\033[0m\n' "$*" >&2; exit 1; }

# apt_ensure PACKAGE... : install the Debian packages that are missing (as root, or through sudo).
apt_ensure() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing system packages: ${missing[*]} (install them with your package manager)"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || die "missing system packages: ${missing[*]}; run: sudo apt-get install ${missing[*]}"
        sudo="sudo"
    fi
    say "Installing system packages: ${missing[*]}"
    if ! $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; then
        $sudo apt-get update -qq >/dev/null
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
            || die "could not install: ${missing[*]}"
    fi
}

python_ensure() {
    command -v python3 >/dev/null || apt_ensure python3
    python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
        || die "Python 3.11 or newer is needed (found $(python3 --version 2>&1))"
    if [ ! -x "$PY" ]; then
        say "Creating the virtualenv in .venv/"
        python3 -m venv "$VENV" 2>/dev/null || {
            apt_ensure "python3-venv"
            rm -rf "$VENV"
            python3 -m venv "$VENV"
        }
    fi
}

# pip_ensure EXTRA : install the project (with an extra such as "dev") when pyproject.toml changed.
pip_ensure() {
    local extra="$1" spec="." stamp
    [ -n "$extra" ] && spec=".[$extra]"
    stamp="$VENV/.kms-installed-$(sha256sum pyproject.toml | cut -c1-16)-${extra:-base}"
    if [ ! -f "$stamp" ]; then
        say "Installing Python packages ($spec)"
        mkdir -p "$VAR/log"
        if ! { "$PY" -m pip install --disable-pip-version-check --upgrade pip \
                && "$PY" -m pip install --disable-pip-version-check -e "$spec"; } >"$VAR/log/pip.log" 2>&1; then
            tail -n 30 "$VAR/log/pip.log" >&2
            die "pip could not install the packages (full log: $VAR/log/pip.log)"
        fi
        rm -f "$VENV"/.kms-installed-*-"${extra:-base}"
        touch "$stamp"
    fi
}

var_ensure() {
    mkdir -p "$VAR/secrets" "$VAR/log"
    chmod 700 "$VAR/secrets"
}

# redis_start SOCKET : a private Redis on a unix socket under ./var/, for this run only.
redis_start() {
    local sock="$1"
    command -v redis-server >/dev/null || die "redis-server is missing"
    rm -f "$sock"
    redis-server --port 0 --unixsocket "$sock" --unixsocketperm 700 --save "" --appendonly no \
        --dir "$VAR" --logfile "$VAR/log/$(basename "$sock" .sock).log" --daemonize no &
    REDIS_PID=$!
    for _ in $(seq 1 50); do
        [ -S "$sock" ] && return 0
        sleep 0.1
    done
    die "Redis did not start (see $VAR/log/)"
}
