#!/usr/bin/env bash
# The op, model and export tests on the oldest supported stack (requirements-oldest.txt:
# torch 2.11, torchvision 0.26, triton 3.6, the GPU machine's), run by `make test`:
#
#     bash scripts/test_oldest_stack.sh PYTHON [pytest args...]
#
# PYTHON is that stack's interpreter (.venv-oldest/bin/python). The extension is built
# for it (C++ only: the CUDA build is the main venv's) in a copy of the working tree,
# build/oldest-stack, since the main tree's fcos_fast/_C*.so belongs to the pinned torch.
# Sources are copied with their times, so an unchanged tree only relinks.
set -euo pipefail
PY=${1:?usage: scripts/test_oldest_stack.sh PYTHON [pytest args]}
shift
# Absolute, but not resolved: a venv's python is a symlink to the system one.
[[ $PY == /* ]] || PY=$PWD/$PY
cd "$(dirname "$0")/.."
TREE=build/oldest-stack
mkdir -p "$TREE"
# Every tracked file and every new one git does not ignore, as they are now; files the
# tree no longer has are removed with the old copy (the build/ objects stay).
find "$TREE" -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
git ls-files -z --cached --others --exclude-standard \
  | xargs -0 cp --parents --preserve=timestamps -t "$TREE"
cd "$TREE"
mkdir -p build
FCOS_FAST_NO_CUDA=1 "$PY" -m pip install --quiet --no-build-isolation --no-deps -e . \
  > build/pip-install.log 2>&1 || { tail -30 build/pip-install.log; exit 1; }
"$PY" -c "import torch, torchvision, triton; print('oldest stack: torch', torch.__version__, \
'torchvision', torchvision.__version__, 'triton', triton.__version__)"
FCOS_FAST_TEST_REQUIRE=native,triton exec "$PY" -m pytest -q -p no:cacheprovider \
  tests/ops tests/model tests/test_export.py -m "not slow" "$@"
