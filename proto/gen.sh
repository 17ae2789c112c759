#!/usr/bin/env bash
# Regenerates the Python code for proto/provtrace/v1 into tracer/serve/gen/
# (package provtrace.tracer.serve.gen), or into DIR when given.
#
#   bash proto/gen.sh [DIR]
#
# protoc writes `from provtrace.v1 import x_pb2`; those imports are rewritten
# to relative ones so the code works inside provtrace.tracer.serve.gen.
# tests/unit/test_api_gen.py checks the checked-in code matches this script.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
out=${1:-$root/tracer/serve/gen}
py=${PYTHON:-$root/.venv/bin/python}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$py" -m grpc_tools.protoc -I "$here" \
  --python_out="$tmp" --pyi_out="$tmp" --grpc_python_out="$tmp" \
  "$here"/provtrace/v1/*.proto

mkdir -p "$out"
for f in "$tmp"/provtrace/v1/*; do
  sed -E 's/^from provtrace\.v1 import /from . import /' "$f" > "$out/$(basename "$f")"
done
cat > "$out/__init__.py" <<'PY'
"""Generated from proto/provtrace/v1 by proto/gen.sh; do not edit."""
PY
