#!/usr/bin/env bash
# Make sure the system tools the tests need are installed (Debian; installs with apt-get).
#
#   scripts/install-test-deps.sh           PostgreSQL server binaries (15 preferred) for tests/pg_cluster.py
#   scripts/install-test-deps.sh --bench   the above plus wrk, for `make bench`
#
# Does nothing (and needs no network) when everything is already there.
set -euo pipefail

usage() { sed -n '2,7s/^# \{0,1\}//p' "$0"; }

bench=0
for arg in "$@"; do
  case "$arg" in
    --bench) bench=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-test-deps: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

fail() { echo "install-test-deps: $*" >&2; exit 1; }

# Non-interactive and quiet; the full apt output goes to a log that is shown only on failure.
apt_log=$(mktemp)
trap 'rm -f "$apt_log"' EXIT
apt_get() {
  local sudo=()
  if (( EUID != 0 )); then
    command -v sudo >/dev/null 2>&1 || fail "not root and no sudo: cannot run apt-get $*"
    sudo=(sudo)
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0 "$@" >>"$apt_log" 2>&1
}
apt_updated=0
apt_install() {
  echo "install-test-deps: apt-get install $*" >&2
  apt_get install "$@" && return 0
  # A fresh machine may have stale or empty package lists: refresh once, then retry.
  if (( ! apt_updated )); then
    apt_updated=1
    apt_get update || { cat "$apt_log" >&2; fail "apt-get update failed"; }
    apt_get install "$@" && return 0
  fi
  return 1
}

find_initdb() {
  if [[ -x /usr/lib/postgresql/15/bin/initdb ]]; then
    echo /usr/lib/postgresql/15/bin/initdb
    return 0
  fi
  # Otherwise the newest installed major version (sort -V orders 9.6 < 15 < 16 correctly).
  local found
  found=$(ls -1d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
  [[ -n $found ]] && echo "$found"
}

if ! find_initdb >/dev/null; then
  # postgresql-15 is bookworm's version; the `postgresql` metapackage covers other releases.
  apt_install postgresql-15 || apt_install postgresql || { cat "$apt_log" >&2; fail "could not install PostgreSQL"; }
  find_initdb >/dev/null || fail "PostgreSQL installed but no /usr/lib/postgresql/*/bin/initdb found"
fi

if (( bench )) && ! command -v wrk >/dev/null 2>&1; then
  apt_install wrk || { cat "$apt_log" >&2; fail "could not install wrk"; }
fi
