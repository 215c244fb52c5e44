#!/usr/bin/env bash
# Quick start, step 1: build walkeeper and run its main job on a throwaway local PostgreSQL.
# Installs Debian's PostgreSQL server package first when no server binaries are present.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v pg_config >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "demo: installing PostgreSQL (Debian package postgresql)"
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/walkeeper-demo.conf
    DEBIAN_FRONTEND=noninteractive apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
fi
cargo build --release --quiet
exec target/release/walkeeper demo "$@"
