#!/usr/bin/env bash
# Run the whole test suite. Exit 5 from pytest ("no tests collected") counts as a failure here:
# a suite that silently runs nothing must not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then
    venv_bin="$PWD/.venv/bin"  # made by setup.sh on systems whose Python is externally managed
    export PATH="$venv_bin:$PATH" PYTHON="$venv_bin/python"
fi
# The suite starts the CLI and the daemon thousands of times. Where PYTHONDONTWRITEBYTECODE is
# set (as on these machines), an editable checkout has no bytecode of its own, so each of those
# processes would compile every module it imports again (about 40-100 ms each).
"${PYTHON:-python3}" -m compileall -q cowfs daemon >/dev/null
"${PYTHON:-python3}" -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "no tests were collected: treating as failure" >&2
    exit 1
fi
exit "$rc"
