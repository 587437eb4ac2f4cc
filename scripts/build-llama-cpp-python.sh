#!/usr/bin/env bash
# Builds llama-cpp-python from its PyPI sdist with llmserve's llama.cpp patches (patches/llama.cpp)
# applied, caches the wheel, and prints its path. llama-cpp-python is sdist-only anyway, so this
# replaces pip's own compile (about 5 minutes on 2 cores) rather than adding one; later calls on
# the same machine print the cached wheel at once.
#
#   scripts/build-llama-cpp-python.sh [python]     (default: python3)
#
# The wheel is built with -march=native (llama.cpp's default), so the cache key holds the CPU's
# flags next to the version and the patches' hash. CMAKE_ARGS passes through to the build as it
# does for a plain `pip install llama-cpp-python`.
set -euo pipefail
PY="${1:-python3}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PATCHES=("$ROOT"/patches/llama.cpp/*.patch)
KEY="$({ cat "${PATCHES[@]}"; uname -m; grep -m1 '^flags' /proc/cpuinfo || true; echo "${CMAKE_ARGS:-}"; } \
        | sha256sum | cut -c1-12)"
CACHE="${LLMSERVE_WHEEL_CACHE:-$HOME/.cache/llmserve/wheels}/llama-cpp-python-$VERSION-$KEY"

if compgen -G "$CACHE/*.whl" >/dev/null; then
  ls "$CACHE"/*.whl
  exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "building llama-cpp-python $VERSION with llmserve's llama.cpp patches (once; ~5 min on 2 cores)" >&2
"$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$WORK" >&2
tar xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION"
for p in "${PATCHES[@]}"; do
  patch -d "$SRC" -p1 --forward --quiet < "$p" >&2
done
# a local version label: `llama_cpp_python==0.3.36` still matches, `pip show` tells the builds apart
sed -i "s/^__version__ = \"$VERSION\"/__version__ = \"$VERSION+llmserve.$KEY\"/" "$SRC/llama_cpp/__init__.py"
grep -q "+llmserve.$KEY" "$SRC/llama_cpp/__init__.py"
"$PY" -m pip wheel -q --no-deps "$SRC" -w "$WORK/dist" >&2
mkdir -p "$CACHE"
mv "$WORK"/dist/*.whl "$CACHE"/
ls "$CACHE"/*.whl
