#!/usr/bin/env bash
# Runs the whole test suite as root: sets up (idempotent, no demo), then
# pytest. Privileged eBPF tests must run, not skip: tests/conftest.py turns
# any skip of a `privileged` test into a failure when CI=true or
# PROVTRACE_REQUIRE_PRIVILEGED=1.
#
#   sudo bash test.sh [PYTEST ARGS...]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
bash setup.sh --no-demo
export PROVTRACE_REQUIRE_PRIVILEGED=${PROVTRACE_REQUIRE_PRIVILEGED:-1}
exec .venv/bin/python -m pytest -q -rs "$@"
