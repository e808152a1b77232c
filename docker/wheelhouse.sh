#!/usr/bin/env bash
# Prepare the wheels the Dockerfile installs from (the image build itself needs no index):
#   docker/wheelhouse.sh [cpu|gpu|imgcls] [PIP]
#     -> dist/imgcls-<version>-py3-none-any.whl          (built from this checkout, every time)
#        .wheelhouse/<variant>/*.whl                 (the dependencies; not for `imgcls`)
# The imgcls wheel is also what bentofile.yaml packs into a bento. Dependency wheels are for
# CPython 3.11 on manylinux x86_64 (the base images' Python). Re-running is cheap: pip's cache
# answers and existing dependency wheels are kept.
set -euo pipefail
VARIANT=${1:-cpu}
PIP=${2:-${PIP:-.venv/bin/pip}}
cd "$(dirname "$0")/.."
mkdir -p dist
rm -f dist/imgcls-*.whl  # never an older build of the sources
"$PIP" wheel --quiet --disable-pip-version-check --no-deps --wheel-dir dist .
echo "dist: $(ls dist/imgcls-*.whl)"
[ "$VARIANT" = imgcls ] && exit 0
mkdir -p ".wheelhouse/$VARIANT"
"$PIP" download --quiet --disable-pip-version-check --only-binary=:all: \
  --python-version 3.11 --implementation cp --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform linux_x86_64 \
  --dest ".wheelhouse/$VARIANT" -r "docker/requirements-$VARIANT.txt"
echo ".wheelhouse/$VARIANT: $(ls ".wheelhouse/$VARIANT" | wc -l) wheels"
