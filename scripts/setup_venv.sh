#!/usr/bin/env bash
# Creates or completes the virtual environment that `make demo` and `make test` use.
# Usage: scripts/setup_venv.sh VENV_DIR [extra args for `python -m venv`]
# Idempotent: the Makefile calls it only when pyproject.toml or this script changed.
set -euo pipefail
VENV=${1:-.venv}
shift || true
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$@" "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check)

# torch first, by exact version: an unpinned torch would pull a several-GB build from the index.
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
# The project and its pinned dependencies (pyproject.toml); --no-deps is not used here on purpose.
"${PIP[@]}" -e ".[test]"

# detectron2: keep a working install (e.g. a CUDA source build, visible through
# --system-site-packages); otherwise the PyPI wheel of upstream's Python sources.
if "$PY" -c "import detectron2" 2>/dev/null; then
  echo "detectron2 already importable: $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
else
  SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # The wheel is tagged cp310; its compiled _C is unused (torchvision ops cover what we need).
  "${PIP[@]}" --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
    --target "$SITE" --upgrade sal-detectron2==0.7.2
fi

# Real aerial photographs with VOC boxes (MIT). Data only: installed without its dependencies,
# never imported; focal_rpn.data.trees finds its data/ folder.
if ! "$PY" -c "import importlib.util as u; s=u.find_spec('deepforest'); assert s" 2>/dev/null; then
  "${PIP[@]}" --no-deps deepforest==2.1.0
fi
"$PY" -c "import detectron2, focal_rpn; print('environment ready: detectron2', detectron2.__version__)"
