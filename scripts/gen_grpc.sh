#!/usr/bin/env bash
# Regenerate the checked-in gRPC modules of taskflow/grpc/ from the .proto:
#   bash scripts/gen_grpc.sh
# Needs the dev extra (grpcio-tools, mypy-protobuf). Writes worker_pb2.py, worker_pb2.pyi,
# worker_pb2_grpc.py and worker_pb2_grpc.pyi into taskflow/grpc/_gen/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BIN=$(dirname "$PY")
OUT=taskflow/grpc/_gen
PROTO_DIR=taskflow/grpc/proto
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m grpc_tools.protoc \
  -I "$PROTO_DIR" \
  --plugin=protoc-gen-mypy="$BIN/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$BIN/protoc-gen-mypy_grpc" \
  --python_out="$TMP" --mypy_out="$TMP" \
  --grpc_python_out="$TMP" --mypy_grpc_out="$TMP" \
  "$PROTO_DIR/taskflow/v1/worker.proto"
mkdir -p "$OUT"
for f in worker_pb2.py worker_pb2.pyi worker_pb2_grpc.py worker_pb2_grpc.pyi; do
  # protoc names the modules after the proto package (taskflow.v1); they live in _gen here.
  sed -e 's/^from taskflow\.v1 import worker_pb2/from taskflow.grpc._gen import worker_pb2/' \
      -e 's/^import taskflow\.v1\.worker_pb2$/import taskflow.grpc._gen.worker_pb2/' \
      -e 's/taskflow\.v1\.worker_pb2\./taskflow.grpc._gen.worker_pb2./g' \
      "$TMP/taskflow/v1/$f" > "$OUT/$f"
done
"$BIN/ruff" format -q "$OUT" || true
echo "generated: $OUT"
