#!/usr/bin/env bash
# Create benchmarks/.venv-compare with the comparison engines of benchmarks/engines_compare
# (pinned in benchmarks/requirements-compare.txt; codemode itself is installed with -e .).
# They never become dependencies of the project or of its .venv.
#
#   benchmarks/compare-setup.sh            set up (or refresh) the venv only
#   benchmarks/compare-setup.sh --run ...  set up, then run the comparison (extra args are passed
#                                          to engines_compare, e.g. --runs 3)
#
# Needs Python 3.11+ (set PYTHON=/path/to/python3.11 if python3 is older).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=benchmarks/.venv-compare
REQS=benchmarks/requirements-compare.txt

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "the comparison needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV ..." >&2
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$VENV/.installed" ] || [ "$REQS" -nt "$VENV/.installed" ] \
    || [ pyproject.toml -nt "$VENV/.installed" ]; then
  echo "installing the comparison engines into $VENV ..." >&2
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQS"
  touch "$VENV/.installed"
fi

if [ "${1:-}" = "--run" ]; then
  shift
  exec "$VENV/bin/python" benchmarks/engines_compare "$@"
fi
echo "ready: $VENV/bin/python benchmarks/engines_compare (or ./dev bench engines_compare)" >&2
