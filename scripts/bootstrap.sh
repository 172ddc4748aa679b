#!/usr/bin/env bash
# Create/refresh the project venv (.venv) and install hifhir into it, editable.
#
#   scripts/bootstrap.sh          runtime dependencies only
#   scripts/bootstrap.sh --test   plus the [test] extra (pytest, xdist, httpx, ruff, hypothesis)
#
# Idempotent and cheap when nothing changed: a stamp .venv/.installed-<sha of pyproject.toml>[-test]
# records the last successful install, so `make test` does not touch the network on every run.
# PYTHON overrides the interpreter used to create the venv (must be >= 3.11). By default the distribution's
# /usr/bin/python3 when it is >= 3.11, else the first python3 on PATH.
set -euo pipefail

usage() { sed -n '2,10s/^# \{0,1\}//p' "$0"; }

with_test=0
for arg in "$@"; do
  case "$arg" in
    --test) with_test=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bootstrap: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
  esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f pyproject.toml ]] || { echo "bootstrap: no pyproject.toml in $PWD" >&2; exit 1; }

# The distribution's interpreter first: Debian and Ubuntu build CPython with profile-guided and link-time
# optimisation, which version managers such as pyenv leave out by default. On the 2-core machine of
# bench/README.md that build ran the server's request path 5-15 % faster (same 3.11 series).
default_python() {
  if /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1 \
     && /usr/bin/python3 -m ensurepip --version >/dev/null 2>&1; then  # Debian ships venv's pip apart
    echo /usr/bin/python3
  else
    echo python3
  fi
}
PYTHON=${PYTHON:-$(default_python)}
VENV=.venv
VPY=$VENV/bin/python
PIP=("$VPY" -m pip --disable-pip-version-check --no-input -q)

fail() { echo "bootstrap: $*" >&2; exit 1; }

# A venv whose interpreter no longer runs (e.g. the pyenv version it points at was removed) is
# recreated rather than patched.
if [[ ! -x $VPY ]] || ! "$VPY" -c 'import sys' >/dev/null 2>&1; then
  command -v "$PYTHON" >/dev/null 2>&1 || fail "$PYTHON not found"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "$PYTHON is $("$PYTHON" -V 2>&1); hifhir needs Python >= 3.11"
  echo "bootstrap: creating $VENV with $("$PYTHON" -V 2>&1)" >&2
  "$PYTHON" -m venv --clear "$VENV" || fail "python -m venv failed"
  rm -f "$VENV"/.installed-*
fi

sha=$(sha256sum pyproject.toml | cut -c1-16)
stamp=$VENV/.installed-$sha
extra=
if (( with_test )); then
  stamp+=-test
  extra='[test]'
fi

# The metadata check catches a venv where someone ran `pip uninstall hifhir` after the stamp was written.
installed() {
  "$VPY" -c 'import importlib.metadata as m; m.version("hifhir")' >/dev/null 2>&1
}
# A test install is a superset of the plain one, so its stamp satisfies a plain bootstrap too.
if { [[ -e $stamp ]] || [[ -e $VENV/.installed-$sha-test ]]; } && installed; then
  exit 0
fi

echo "bootstrap: installing hifhir$extra into $VENV (pyproject.toml changed or first run)" >&2
# pip -q still lets build-backend warnings through; keep them in a log that is shown only on failure.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
pip_install() {
  "${PIP[@]}" install "$@" >"$log" 2>&1 || { cat "$log" >&2; fail "pip install $* failed"; }
}
pip_install --upgrade pip
pip_install -e ".$extra"

rm -f "$VENV"/.installed-*
touch "$stamp"
