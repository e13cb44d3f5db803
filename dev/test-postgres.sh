#!/usr/bin/env bash
# Start (creating on first use) the throwaway PostgreSQL cluster central's tests run against,
# then print its admin URL. Idempotent; run as root on Debian 12 with the postgresql package.
#
# A separate cluster (15/cairntest, port 5439, loopback only) instead of the machine's main
# one: its settings trade durability for speed (fsync off) and every test creates and drops
# databases in it, which must never touch real data.
set -euo pipefail
version=15
cluster=cairntest
port=5439
role=cairn_test
password=cairn_test

if ! pg_lsclusters -h | awk '{print $1"/"$2}' | grep -qx "$version/$cluster"; then
  echo "test-postgres: creating cluster $version/$cluster on port $port" >&2
  # C collation: text sorts by bytes, as in SQLite, so ORDER BY agrees on both databases.
  pg_createcluster "$version" "$cluster" --port "$port" --locale C.UTF-8 --lc-collate C -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  conf="/etc/postgresql/$version/$cluster/conf.d/cairn-test.conf"
  cat >"$conf" <<EOF
# Test cluster only: nothing here needs to survive a power cut.
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 400
ssl = off
EOF
fi
if ! pg_lsclusters -h | awk -v c="$cluster" '$2==c {print $4}' | grep -qx online; then
  # Its messages (e.g. "Removed stale pid file.") go to stderr: stdout is only the URL.
  pg_ctlcluster "$version" "$cluster" start >&2
fi
psql_admin() { runuser -u postgres -- psql -qAt -p "$port" -d postgres "$@"; }
for _ in $(seq 1 50); do psql_admin -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'")" != 1 ]; then
  psql_admin -c "CREATE ROLE $role LOGIN CREATEDB PASSWORD '$password'"
fi
echo "postgres://$role:$password@127.0.0.1:$port/postgres"
