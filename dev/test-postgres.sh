#!/usr/bin/env bash
# Start (creating on first use) the throwaway PostgreSQL cluster central's tests run against,
# then print its admin URL. Idempotent; run as root on Debian 12 with the postgresql package.
#
# A separate cluster (15/cairntest, port 5439, loopback only) instead of the machine's main
# one: its settings trade durability for speed (fsync off) and every test creates and drops
# databases in it, which must never touch real data.
#
# The cluster speaks TLS only, with a certificate from a test CA made here (its key is thrown
# away once the server certificate is signed). The URL asks for sslmode=verify-full against
# that CA, so the whole PostgreSQL test run goes over checked TLS, as production should.
set -euo pipefail
version=15
cluster=cairntest
port=5439
role=cairn_test
password=cairn_test
confdir="/etc/postgresql/$version/$cluster"
tls="$confdir/tls"

if ! pg_lsclusters -h | awk '{print $1"/"$2}' | grep -qx "$version/$cluster"; then
  echo "test-postgres: creating cluster $version/$cluster on port $port" >&2
  # C collation: text sorts by bytes, as in SQLite, so ORDER BY agrees on both databases.
  # hostssl only: a plain-text login from the loopback is refused.
  pg_createcluster "$version" "$cluster" --port "$port" --locale C.UTF-8 --lc-collate C -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
fi
if [ ! -s "$tls/server.crt" ] || [ ! -s "$tls/ca.crt" ]; then
  echo "test-postgres: making the test CA and server certificate in $tls" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$tls"
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 \
    -days 3650 -subj "/CN=cairn test PostgreSQL CA" -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 \
    -subj "/CN=localhost" -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$work/ext"
  openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$work/ext" -out "$work/server.crt" 2>/dev/null
  install -o postgres -g postgres -m 0600 "$work/server.key" "$tls/server.key"
  install -o postgres -g postgres -m 0644 "$work/server.crt" "$tls/server.crt"
  install -m 0644 "$work/ca.crt" "$tls/ca.crt"
fi
conf="$confdir/conf.d/cairn-test.conf"
want=$(cat <<CONF
# Test cluster only: nothing here needs to survive a power cut.
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 400
ssl = on
ssl_cert_file = '$tls/server.crt'
ssl_key_file = '$tls/server.key'
CONF
)
hba="$confdir/pg_hba.conf"
hba_want=$(cat <<HBA
# Test cluster only (dev/test-postgres.sh): peer for the local admin, TLS + SCRAM over TCP.
local all postgres peer
local all all peer
hostssl all all 127.0.0.1/32 scram-sha-256
HBA
)
changed=0
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then printf '%s\n' "$want" >"$conf"; changed=1; fi
if [ "$(cat "$hba")" != "$hba_want" ]; then printf '%s\n' "$hba_want" >"$hba"; changed=1; fi
online=$(pg_lsclusters -h | awk -v c="$cluster" '$2==c {print $4}')
if [ "$online" != online ]; then
  # Its messages (e.g. "Removed stale pid file.") go to stderr: stdout is only the URL.
  pg_ctlcluster "$version" "$cluster" start >&2
elif [ "$changed" = 1 ]; then
  pg_ctlcluster "$version" "$cluster" restart >&2
fi
psql_admin() { runuser -u postgres -- psql -qAt -p "$port" -d postgres "$@"; }
for _ in $(seq 1 50); do psql_admin -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" != 1 ]; then
  psql_admin -c "CREATE ROLE $role LOGIN CREATEDB PASSWORD '$password'"
fi
echo "postgres://$role:$password@127.0.0.1:$port/postgres?sslmode=verify-full&sslrootcert=$tls/ca.crt"
