#!/usr/bin/env bash
# Install cowfs and everything it needs on a fresh Debian/Ubuntu machine (run as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# fuse3 + libfuse3-dev + pkg-config: the mount (pyfuse3 builds against libfuse3);
# attr: getfattr/setfattr; bubblewrap: pipeline sandboxes; systemd: systemd-analyze for the unit;
# rsync: the mount's tests copy with rsync -aX; rclone: one of the real S3 clients the gateway's
# tests use.
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    fuse3 libfuse3-dev pkg-config gcc python3-dev attr bubblewrap systemd tar coreutils findutils \
    rsync rclone \
    >/dev/null
PY="${PYTHON:-python3}"
# A distribution's own Python (Debian 12, Ubuntu 23.04+) refuses system-wide pip installs
# (PEP 668): install into .venv in the checkout instead; test.sh and demo.sh pick it up.
if "$PY" - <<'PYCODE'
import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)
PYCODE
then
    $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    "$PY" -m venv .venv
    PY=.venv/bin/python
    echo "this Python is managed by the system: installing into $(pwd)/.venv"
fi
# torch first, spelled exactly so: this pin takes a local CPU build quickly, where any other
# spelling may pull a multi-GB CUDA build; the `torch` extra and the test extra then find it met.
"$PY" -m pip install --quiet --disable-pip-version-check torch==2.13.0
"$PY" -m pip install --quiet --disable-pip-version-check -e '.[test]'
echo "cowfs installed: $("$PY" -m cowfs.cli.main --version)"
