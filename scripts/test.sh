#!/usr/bin/env bash
# Run the whole test suite. Exit 5 from pytest ("no tests collected") counts as a failure here:
# a suite that silently runs nothing must not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
    venv_bin="$PWD/.venv/bin"  # made by setup.sh on systems whose Python is externally managed
    export PATH="$venv_bin:$PATH" PYTHON="$venv_bin/python"
fi
"${PYTHON:-python3}" -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "no tests were collected: treating as failure" >&2
    exit 1
fi
exit "$rc"
