#!/usr/bin/env bash
# Refreshes requirements.lock: the exact versions, with hashes, of every Python
# package that setup.sh installs into .venv (runtime, the `dev`, `jupyter` and
# `fleet` extras, transitive dependencies, and the build backend).
#
#   bash tools/lock.sh                          # re-resolve, keeping every pin that still fits
#   bash tools/lock.sh --upgrade                # move everything to the newest allowed versions
#   bash tools/lock.sh --upgrade-package grpcio # move one package (repeatable)
#
# Extra arguments go to `uv pip compile`. The resolver (uv, pinned with
# hashes in tools/uv-requirements.txt) runs from a throwaway venv, so nothing
# here touches .venv. The lock targets what setup.sh supports: Debian 12's
# /usr/bin/python3 (CPython 3.11) on x86_64 (glibc 2.36).
#
# A refreshed lock is a change to review and commit like code: read the diff,
# run `sudo bash test.sh`, and regenerate the gRPC code (bash proto/gen.sh)
# when grpcio-tools or protobuf moved. Nothing else ever rewrites the lock.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cd "$root"

tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
/usr/bin/python3 -m venv "$tool/venv"
"$tool/venv/bin/python" -m pip install -q --disable-pip-version-check \
  --require-hashes -r tools/uv-requirements.txt

# --no-config: no uv.toml or UV_* settings of this machine change the result;
# PyPI is the only index, so the hashes are PyPI's.
"$tool/venv/bin/uv" pip compile --no-config --quiet \
  --index-url https://pypi.org/simple \
  --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
  --extra dev --extra jupyter --extra fleet \
  --generate-hashes \
  --custom-compile-command "bash tools/lock.sh" \
  --output-file requirements.lock \
  "$@" \
  pyproject.toml tools/build-requirements.in
echo "wrote requirements.lock ($(grep -c '^[A-Za-z0-9]' requirements.lock) packages); review the diff and commit it"
