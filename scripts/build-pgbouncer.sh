#!/usr/bin/env bash
# Build PgBouncer 1.24.1 from Debian 13's source package (deb.debian.org, checked
# against its sha256) into PREFIX (default /opt/pgbouncer-1.24), unless it is there.
#
# Why: the SDK's pool runs through PgBouncer in transaction mode only from PgBouncer
# 1.21 on (max_prepared_statements: psqlpy sends every parameterised statement as a
# named prepared statement), and Debian 12 ships 1.18. tests/test_pgbouncer.py uses
# the binary named by AMP_TEST_PGBOUNCER for its transaction-mode test (.ci/run sets it).
set -euo pipefail
PREFIX="${1:-/opt/pgbouncer-1.24}"
VERSION=1.24.1
SHA256=da72a3aba13072876d055a3e58dd4aba4a5de4ed6148e73033185245598fd3e0
if [ -x "$PREFIX/bin/pgbouncer" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=""
    for pkg in libevent-dev libssl-dev pkg-config make gcc; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null 2>&1 ||
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null
    fi
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
curl -sSfL -o "$work/src.tar.gz" \
    "http://deb.debian.org/debian/pool/main/p/pgbouncer/pgbouncer_${VERSION}.orig.tar.gz"
echo "$SHA256  $work/src.tar.gz" | sha256sum -c --quiet
tar -xzf "$work/src.tar.gz" -C "$work"
cd "$work/pgbouncer-$VERSION"
./configure --prefix="$PREFIX" --without-cares --without-pam >/dev/null
make -j2 >/dev/null
make install >/dev/null
"$PREFIX/bin/pgbouncer" --version | head -1
