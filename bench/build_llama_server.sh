#!/usr/bin/env bash
# Builds llama.cpp's C++ llama-server from the very source llama-cpp-python vendors, once, and
# caches it. Optional, for the side-by-side benchmark only; never part of `make test`.
# Prints the binary's path; its stock llama.cpp shared libraries are copied to ../lib beside it
# (the bench runs llmserve on them too, to tell the server layer from llmserve's llama.cpp patch).
# About 7 minutes on 2 cores the first time.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${LLMSERVE_BENCH_CACHE:-$HOME/.cache/llmserve/bench}"
BIN="$CACHE/llama-server-$VERSION/bin/llama-server"
LIB="$CACHE/llama-server-$VERSION/lib"
if [ -x "$BIN" ] && [ -e "$LIB/libllama.so" ]; then echo "$BIN"; exit 0; fi
command -v cmake >/dev/null || { apt-get update -q && apt-get install -y -q cmake; } >&2
mkdir -p "$CACHE/src"
cd "$CACHE/src"
if [ ! -d "llama_cpp_python-$VERSION" ]; then
  python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d . >&2
  tar xzf "llama_cpp_python-$VERSION.tar.gz"
fi
SRC="$CACHE/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$SRC" -B "$CACHE/build-$VERSION" -DCMAKE_BUILD_TYPE=Release -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$CACHE/build-$VERSION" --target llama-server -j "$(nproc)" >&2
mkdir -p "$(dirname "$BIN")"
cp "$CACHE/build-$VERSION/bin/llama-server" "$BIN"
mkdir -p "$LIB"
cp -P "$CACHE/build-$VERSION"/bin/lib*.so* "$LIB"/
echo "$BIN"
