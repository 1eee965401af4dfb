#!/usr/bin/env bash
# PostgreSQL for the line server, idempotently, as root on Debian 12:
#
#   deploy/postgres-setup.sh
#
# Installs the `postgresql` package, starts its cluster (systemd when it runs, else
# pg_ctlcluster) listening on localhost only, creates the role `provisioner` with a random
# password (SCRAM-SHA-256) and the database `provisioner` it owns, and writes
#
#   /etc/provisioner/postgres.password   the password (0600, root)
#   /etc/provisioner/line.env            PROVISIONER_DATABASE_URL=postgresql+psycopg://...
#                                        (0600, root; provisioner-line.service and the
#                                        provisioner-line wrapper read it as root)
#
# The password is never printed, never on a command line, and never reaches the server in
# clear: the server gets only its SCRAM verifier. Running it again keeps the password (the
# file) and the database, and only repairs what is missing. Then create the schema:
#
#   sudo provisioner-line db upgrade
#
# Variables: PG_ROLE, PG_DATABASE (default provisioner), ETC_DIR (default /etc/provisioner).
set -euo pipefail

PG_ROLE=${PG_ROLE:-provisioner}
PG_DATABASE=${PG_DATABASE:-provisioner}
ETC_DIR=${ETC_DIR:-/etc/provisioner}
PASSWORD_FILE=$ETC_DIR/postgres.password
ENV_FILE=$ETC_DIR/line.env

case "$PG_ROLE$PG_DATABASE" in
  *[!a-z0-9_]*) echo "error: PG_ROLE and PG_DATABASE must be lower-case letters, digits, _" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  echo "error: run as root (installs a package, starts PostgreSQL, writes $ETC_DIR)" >&2
  exit 1
fi

if ! command -v pg_lsclusters >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "==> apt-get install postgresql"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
fi

# The newest installed major version; its cluster "main" (the package creates it, unless
# createcluster.conf says otherwise: then make it here).
VERSION=$(ls /usr/lib/postgresql | sort -n | tail -1)
CLUSTER=main
if ! pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {f=1} END {exit !f}'; then
  echo "==> creating cluster $VERSION/$CLUSTER"
  pg_createcluster "$VERSION" "$CLUSTER"
fi
PORT=$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $3}')
CONF=/etc/postgresql/$VERSION/$CLUSTER/postgresql.conf
# Debian's default already listens on localhost only; say so explicitly, and keep it that
# way on a re-run. A database on another host needs TLS (sslmode=verify-full): not this script.
if ! grep -Eq "^listen_addresses = 'localhost'" "$CONF"; then
  printf "\n# deploy/postgres-setup.sh: the line server's own database, local only\nlisten_addresses = 'localhost'\n" >> "$CONF"
fi

status=$(pg_lsclusters -h | awk -v v="$VERSION" -v c="$CLUSTER" '$1 == v && $2 == c {print $4}')
if [ -d /run/systemd/system ]; then
  systemctl enable --now postgresql >/dev/null
  systemctl start "postgresql@$VERSION-$CLUSTER"
elif [ "$status" != online ]; then
  echo "==> starting cluster $VERSION/$CLUSTER (no systemd: pg_ctlcluster)"
  pg_ctlcluster "$VERSION" "$CLUSTER" start
fi
echo "==> PostgreSQL $VERSION/$CLUSTER is running on 127.0.0.1:$PORT"

install -d -m 0755 "$ETC_DIR"
umask 077
if [ ! -s "$PASSWORD_FILE" ]; then
  # hex: nothing to escape in a URL, a shell-sourced env file or systemd's EnvironmentFile=
  openssl rand -hex 24 > "$PASSWORD_FILE.tmp"
  chmod 0600 "$PASSWORD_FILE.tmp"
  mv "$PASSWORD_FILE.tmp" "$PASSWORD_FILE"
  echo "==> new database password written to $PASSWORD_FILE (0600)"
fi
chmod 0600 "$PASSWORD_FILE"
PASSWORD=$(tr -d '\n' < "$PASSWORD_FILE")
case "$PASSWORD" in
  ""|*[!0-9a-f]*) echo "error: $PASSWORD_FILE must hold the hex password this script made" >&2; exit 1 ;;
esac

# The SCRAM-SHA-256 verifier PostgreSQL stores (RFC 5802/7677, the format of
# pg_authid.rolpassword); the password goes to python on stdin, never in argv.
VERIFIER=$(printf '%s' "$PASSWORD" | python3 -c '
import base64, hashlib, hmac, os, sys
pw = sys.stdin.read().encode()
salt, n = os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", pw, salt, n)
client = hmac.new(salted, b"Client Key", "sha256").digest()
server = hmac.new(salted, b"Server Key", "sha256").digest()
b64 = lambda b: base64.b64encode(b).decode()
print(f"SCRAM-SHA-256${n}:{b64(salt)}${b64(hashlib.sha256(client).digest())}:{b64(server)}")
')

# SQL on stdin (not argv): the verifier is not a secret like the password, but stays off
# the process list all the same.
runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_ROLE') THEN
    CREATE ROLE $PG_ROLE LOGIN;
  END IF;
END \$\$;
ALTER ROLE $PG_ROLE WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$VERIFIER';
SELECT 'CREATE DATABASE $PG_DATABASE OWNER $PG_ROLE'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DATABASE') \gexec
ALTER DATABASE $PG_DATABASE OWNER TO $PG_ROLE;
REVOKE ALL ON DATABASE $PG_DATABASE FROM PUBLIC;
SQL
echo "==> role $PG_ROLE and database $PG_DATABASE are ready (SCRAM-SHA-256 over 127.0.0.1)"

# line.env: replace our variable, keep any other line; written whole, then renamed (0600).
URL="postgresql+psycopg://$PG_ROLE:$PASSWORD@127.0.0.1:$PORT/$PG_DATABASE"
tmp=$(mktemp "$ENV_FILE.XXXXXX")
if [ -f "$ENV_FILE" ]; then
  grep -v '^PROVISIONER_DATABASE_URL=' "$ENV_FILE" > "$tmp" || true
fi
printf 'PROVISIONER_DATABASE_URL=%s\n' "$URL" >> "$tmp"
chmod 0600 "$tmp"
mv "$tmp" "$ENV_FILE"
unset PASSWORD URL VERIFIER
echo "==> wrote PROVISIONER_DATABASE_URL to $ENV_FILE (0600; the password is in it and in $PASSWORD_FILE)"
echo "    next: sudo provisioner-line db upgrade   (creates the schema; run it after every upgrade)"
