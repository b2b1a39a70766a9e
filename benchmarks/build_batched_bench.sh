#!/usr/bin/env bash
# Build llama.cpp's llama-batched-bench from the llama.cpp source vendored in the
# llama-cpp-python sdist of the installed version (the anchor for bench_batching.py).
#
#   benchmarks/build_batched_bench.sh            # prints the binary's path
#   BATCHED_BENCH_CACHE=/some/dir benchmarks/build_batched_bench.sh
#
# Idempotent: when the binary exists it only prints its path. Runs niced (2-core machine).
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${BATCHED_BENCH_CACHE:-$HOME/.cache/sentech-eval/llama-batched-bench-$VERSION}"
BIN="$CACHE/build/bin/llama-batched-bench"
PYTHON="${PYTHON:-python3}"

if [ -x "$BIN" ]; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$CACHE"
if [ ! -d "$CACHE/src/vendor/llama.cpp" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$PYTHON" -m pip download --quiet --no-binary :all: --no-deps \
        "llama-cpp-python==$VERSION" -d "$tmp" >&2
    mkdir -p "$CACHE/src"
    tar -xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$CACHE/src" --strip-components=1
fi

nice -n 19 cmake -S "$CACHE/src/vendor/llama.cpp" -B "$CACHE/build" \
    -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF \
    -DCMAKE_BUILD_TYPE=Release >&2
nice -n 19 cmake --build "$CACHE/build" --target llama-batched-bench -j2 >&2
echo "$BIN"
