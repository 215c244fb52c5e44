#!/bin/sh
# Runs once, when the primary's data directory is created (docker-entrypoint-initdb.d): the role walkeeper
# streams as, its replication slot, and the pg_hba.conf line that admits it for replication.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v password="$REPLICATOR_PASSWORD" <<'SQL'
CREATE ROLE replicator LOGIN REPLICATION PASSWORD :'password';
SELECT pg_create_physical_replication_slot('walkeeper');
SQL
echo "host replication replicator all scram-sha-256" >>"$PGDATA/pg_hba.conf"
