#!/usr/bin/env bash
# Set-up on a fresh machine, then run a command in the project's virtual environment:
#   bash bootstrap.sh python align/forward_diff.py --model retina_r50
# The environment (.venv, or $VENV) is (re)built only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")"
venv=${VENV:-.venv}
stamp="$venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "bootstrap: installing into $venv (first run downloads torch's CUDA build, a few GB)" >&2
    python3 -m venv "$venv"
    # Some machines offer a local CPU-only wheel, torch 2.13.0+cpu, that satisfies torch==2.13.0 but cannot
    # load torchvision's compiled ops. '===' (exact version string) excludes it, so pip takes the index build.
    # --no-cache-dir: a cached copy of the CUDA wheels would double the few GB they take on disk
    "$venv/bin/python" -m pip install --quiet --no-cache-dir "torch===2.13.0" -e ".[test]"
    "$venv/bin/python" - <<'PY'
import warnings; warnings.filterwarnings("ignore", "No ccache found")
import torch, torchvision, paddle
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.], [20., 20., 30., 30.]])
keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
assert keep.tolist() == [0, 2], keep
print(f"bootstrap: torch {torch.__version__}, torchvision {torchvision.__version__}, paddle {paddle.__version__}: ops load")
PY
    rm -f "$venv"/.installed-*
    touch "$stamp"
fi
export PATH="$PWD/$venv/bin:$PATH"
exec "$@"
