#!/usr/bin/env bash
# Install the compendium's pinned environment into a virtualenv (created if missing) or, with
# --here, into the active Python environment (e.g. a conda env made from environment.yml).
# torchattacks comes last with --no-deps: it pins requests~=2.25.1, which current papermill and
# Flower cannot use; its real dependencies (torch, torchvision, scipy, tqdm, numpy) are pinned here.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--here" ]; then
  python=python
else
  venv="${1:-.venv}"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  python="$venv/bin/python"
fi
"$python" -m pip install --quiet --upgrade pip
"$python" -m pip install --quiet -r requirements.txt
"$python" -m pip install --quiet --no-deps torchattacks==3.5.1
"$python" -m pip install --quiet --no-deps -e .
"$python" -c "import torch, timm, torchattacks, diffusers, torchmetrics, pydicom; print('environment ready: torch', torch.__version__)"
