#!/usr/bin/env bash
# Install everything a station PC (or CI) needs, idempotently: Debian packages, then a
# virtualenv with the product. Run as root on Debian 12 (apt reachable); `make` calls it.
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
[ -e /usr/lib/x86_64-linux-gnu/p11-kit-proxy.so ] || [ -e /usr/lib/aarch64-linux-gnu/p11-kit-proxy.so ] \
  || need_apt+=(p11-kit p11-kit-modules)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v pkcs11-tool >/dev/null 2>&1 || need_apt+=(opensc)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# OpenSSL's PKCS#11 engine: the CA benchmark's `openssl x509` peer signs with the token key.
ls /usr/lib/*/engines-3/pkcs11.so >/dev/null 2>&1 || need_apt+=(libengine-pkcs11-openssl)
# PostgreSQL is supported beside SQLite; the test suite runs the database tests on both.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v "$PYTHON" >/dev/null 2>&1 || need_apt+=(python3 python3-venv python3-dev)
if command -v "$PYTHON" >/dev/null 2>&1 && ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need_apt+=(python3-venv)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing Debian packages (${need_apt[*]}); run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Debian's redis-server package starts a system instance on :6379; the product never uses
# it (each station runs a private one on a unix socket under ./var), so leave it alone.

"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "error: Python >= 3.11 required ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "==> pip install -e .[dev]"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
echo "==> installed"
