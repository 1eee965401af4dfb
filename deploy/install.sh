#!/usr/bin/env bash
# Install what this machine needs, idempotently, as root on Debian 12 (apt reachable):
#
#   deploy/install.sh                  development and CI (what `make install` runs): every
#                                      Debian package the tests use, and ./.venv with -e .[dev]
#   deploy/install.sh --role line      a line server: SoftHSM/p11-kit, redis-server, a venv in
#                                      /opt/provisioner with `pip install .[postgres]`, the
#                                      user `provisioner`, /etc/provisioner/line.toml, the
#                                      systemd unit and the `provisioner-line` admin wrapper
#   deploy/install.sh --role station   a station PC: python3-venv and i2c-tools only, a venv
#                                      with `pip install .` (no dev tools, no PostgreSQL, no
#                                      HSM), the user `provisioner-station`, its unit and the
#                                      `provisioner-station` wrapper
#
# The roles never start or enable a service and never overwrite a config that exists; the
# first start is in docs/deploy.md. PostgreSQL for the line: deploy/postgres-setup.sh.
set -euo pipefail

usage() {
  sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

ROLE=dev
while [ $# -gt 0 ]; do
  case "$1" in
    --role) [ $# -ge 2 ] || { usage >&2; exit 2; }; ROLE=$2; shift 2 ;;
    --role=*) ROLE=${1#--role=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$ROLE" in
  dev|line|station) ;;
  *) echo "error: --role must be line or station (no --role: development), got $ROLE" >&2; exit 2 ;;
esac

if [ "$ROLE" = dev ]; then
  PYTHON=${PYTHON:-python3}
else
  # The service user runs this interpreter: Debian's, not one under root's home (pyenv).
  PYTHON=${PYTHON:-/usr/bin/python3}
fi

apt_install() {
  [ $# -gt 0 ] || return 0
  echo "==> apt-get install $*"
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing Debian packages ($*); run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need_python() {
  command -v "$PYTHON" >/dev/null 2>&1 || need_apt+=(python3 python3-venv python3-dev)
  if command -v "$PYTHON" >/dev/null 2>&1 && ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    need_apt+=(python3-venv)
  fi
}

check_python() {
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
    echo "error: Python >= 3.11 required ($PYTHON is $("$PYTHON" -V 2>&1))" >&2; exit 1; }
}

need_p11kit() {
  [ -e /usr/lib/x86_64-linux-gnu/p11-kit-proxy.so ] || [ -e /usr/lib/aarch64-linux-gnu/p11-kit-proxy.so ] \
    || need_apt+=(p11-kit p11-kit-modules)
}

# The MQTT bridge: Debian's mosquitto and what its plugin (deploy/mosquitto) builds with.
need_bridge() {
  local pkg
  for pkg in mosquitto mosquitto-dev libmosquitto-dev libcurl4-openssl-dev libcjson-dev \
      libssl-dev gcc libc6-dev make; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
      || need_apt+=("$pkg")
  done
}

# Build the plugin into <venv>/lib/provisioner/provisioner_plugin.so, where
# [bridge] plugin points by default (sys.prefix/lib/provisioner). Built in a temporary
# directory so the checkout stays clean.
build_bridge_plugin() {
  local venv=$1 src build
  src=$(cd "$(dirname "${BASH_SOURCE[0]}")/mosquitto" && pwd)
  build=$(mktemp -d)
  echo "==> building the mosquitto plugin into $venv/lib/provisioner"
  make -s -C "$src" OUT="$build/provisioner_plugin.so" PREFIX="$venv" install
  rm -rf "$build"
}

# --- development and CI: unchanged behaviour of `make install` ----------------------------
if [ "$ROLE" = dev ]; then
  VENV=${VENV:-.venv}
  need_apt=()
  command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
  need_p11kit
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
  command -v pkcs11-tool >/dev/null 2>&1 || need_apt+=(opensc)
  command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
  # OpenSSL's PKCS#11 engine: the CA benchmark's `openssl x509` peer signs with the token key.
  ls /usr/lib/*/engines-3/pkcs11.so >/dev/null 2>&1 || need_apt+=(libengine-pkcs11-openssl)
  # PostgreSQL is supported beside SQLite; the test suite runs the database tests on both.
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
  # The dashboard's browser tests drive Debian's chromium through Playwright (Playwright's
  # own browser download is never used); promtool checks the alert rules and /metrics.
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  need_bridge
  need_python
  apt_install "${need_apt[@]}"

  # Debian's redis-server package starts a system instance on :6379; the product never uses
  # it (each station runs a private one on a unix socket under ./var), so leave it alone.
  # Likewise Debian's mosquitto package may start a system broker on :1883; the bridge is a
  # private mosquitto the supervisor starts with its own config under ./var/bridge.

  check_python
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  echo "==> pip install -e .[dev]"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev]'
  build_bridge_plugin "$(cd "$VENV" && pwd)"
  echo "==> installed"
  exit 0
fi

# --- a line server or a station PC ---------------------------------------------------------
if [ "$(id -u)" -ne 0 ]; then
  echo "error: --role $ROLE installs users, /etc/provisioner and a systemd unit: run as root" >&2
  exit 1
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${PREFIX:-/opt/provisioner}
VENV=${VENV:-$PREFIX/venv}

if [ "$ROLE" = line ]; then
  USER_NAME=provisioner
  STATE=/var/lib/provisioner
  EXTRAS=${EXTRAS:-postgres}   # e.g. EXTRAS=postgres,aws for uploads to AWS IoT
else
  USER_NAME=provisioner-station
  STATE=/var/lib/provisioner-station
  EXTRAS=${EXTRAS:-}
fi

need_apt=()
need_python
if [ "$ROLE" = line ]; then
  # The signer (SoftHSM through p11-kit's proxy; a hardware HSM brings its own module), the
  # broker the supervisor starts, and tools to inspect tokens and certificates. PostgreSQL
  # comes with deploy/postgres-setup.sh (or lives on another host).
  command -v softhsm2-util >/dev/null 2>&1 || need_apt+=(softhsm2)
  need_p11kit
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
  command -v pkcs11-tool >/dev/null 2>&1 || need_apt+=(opensc)
  command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
  # The MQTT bridge devices in the field connect to (mosquitto + the product's plugin).
  need_bridge
else
  # A station needs no Debian library beyond Python: the wheels bring cryptoauthlib (with
  # its libusb/libudev), cryptography and the Redis client. i2c-tools creates the `i2c`
  # group and the udev rule that gives it /dev/i2c-*, and has i2cdetect for checking a jig.
  command -v i2cdetect >/dev/null 2>&1 || need_apt+=(i2c-tools)
fi
apt_install "${need_apt[@]}"
check_python

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating virtualenv $VENV"
  install -d -m 0755 "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
spec="$REPO${EXTRAS:+[$EXTRAS]}"
echo "==> pip install .${EXTRAS:+[$EXTRAS]} (from $REPO) into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
# Not editable: the clone can be removed afterwards. --upgrade reinstalls this project and
# moves a dependency only when the new version needs it.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade "$spec"
if [ "$ROLE" = line ]; then
  build_bridge_plugin "$VENV"
fi

if ! getent passwd "$USER_NAME" >/dev/null; then
  echo "==> adding system user $USER_NAME"
  useradd --system --user-group --home-dir "$STATE" --no-create-home \
    --shell /usr/sbin/nologin "$USER_NAME"
fi
install -d -m 0755 /etc/provisioner
install -d -o "$USER_NAME" -g "$USER_NAME" -m 0700 "$STATE"
if [ ! -e "/etc/provisioner/$ROLE.toml" ]; then
  install -m 0644 "$REPO/deploy/$ROLE.toml" "/etc/provisioner/$ROLE.toml"
  echo "==> wrote /etc/provisioner/$ROLE.toml: edit it (addresses, station ids) before the first start"
fi
install -m 0644 "$REPO/deploy/nftables-$ROLE.conf" "/etc/provisioner/nftables-$ROLE.conf"
install -D -m 0644 "$REPO/docs/deploy.md" "$PREFIX/docs/deploy.md"

if [ "$ROLE" = line ]; then
  # Token files the admin wrapper's commands read or write (they run as $USER_NAME).
  install -d -o "$USER_NAME" -g "$USER_NAME" -m 0700 /etc/provisioner/tokens
else
  if getent group i2c >/dev/null; then
    usermod -a -G i2c "$USER_NAME"
  fi
  # /dev/i2c-N exists only with the i2c-dev module.
  echo i2c-dev > /etc/modules-load.d/provisioner-station.conf
  # A Microchip kit (CryptoAuth Trust Platform, vendor 03eb) over USB: the station's user
  # may open it (hidapi uses libusb or hidraw); the unit's DeviceAllow= admits both.
  if [ -d /etc/udev/rules.d ]; then
    cat > /etc/udev/rules.d/60-provisioner-station.rules <<EOF
SUBSYSTEM=="usb", ATTR{idVendor}=="03eb", GROUP="$USER_NAME", MODE="0660"
KERNEL=="hidraw*", ATTRS{idVendor}=="03eb", GROUP="$USER_NAME", MODE="0660"
EOF
  fi
fi

# The CLI as the service user: files it writes (tokens, keys, the broker ACL) must belong
# to the service, never to root. Run it as root (sudo).
WRAPPER=/usr/local/sbin/provisioner-$ROLE
ENV_FILE=/etc/provisioner/$ROLE.env
cat > "$WRAPPER" <<EOF
#!/bin/sh
# provisioner-$ROLE ARGS...: the provisioner CLI as user $USER_NAME, with
# /etc/provisioner/$ROLE.toml and the variables of $ENV_FILE (read here, as root).
# Written by deploy/install.sh --role $ROLE.
set -eu
if [ "\$(id -u)" -ne 0 ]; then
  echo "provisioner-$ROLE: run it as root (sudo provisioner-$ROLE ...)" >&2
  exit 1
fi
if [ -r $ENV_FILE ]; then set -a; . $ENV_FILE; set +a; fi
cd $STATE
umask 077
HOME=$STATE exec setpriv --reuid=$USER_NAME --regid=$USER_NAME --init-groups -- \\
  $VENV/bin/provisioner --config /etc/provisioner/$ROLE.toml "\$@"
EOF
chmod 0755 "$WRAPPER"

# What the service starts with must load as the service user (an interpreter under root's
# home, or a module missing without the dev extras, shows here rather than at first start).
if ! (cd / && setpriv --reuid="$USER_NAME" --regid="$USER_NAME" --init-groups -- \
    "$VENV/bin/python" -c 'import provisioner.cli.main, workers.tasks'); then
  echo "error: $VENV does not load as user $USER_NAME (see above)" >&2
  exit 1
fi

unit=provisioner-$ROLE.service
sed -e "s#/opt/provisioner/venv/bin/provisioner#$VENV/bin/provisioner#" \
    -e "s#/opt/provisioner/docs#$PREFIX/docs#" \
    "$REPO/deploy/systemd/$unit" > "/etc/systemd/system/$unit"
chmod 0644 "/etc/systemd/system/$unit"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
fi
echo "==> installed the $ROLE role: $VENV, /etc/provisioner/$ROLE.toml, $unit, $WRAPPER"
echo "    next: docs/deploy.md, \"First start\" (the unit is neither enabled nor started)"
