#!/usr/bin/env bash
# Set up a fresh machine for colpali-milvus: poppler, a virtual environment in .venv, the package with its dev tools.
# Idempotent: re-running only installs what is missing. Called by `make demo` and `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

need_apt=()
command -v pdftoppm >/dev/null || need_apt+=(poppler-utils)
# headless Chromium for tests/test_browser.py (the explorer as a browser shows it); where apt-get is missing the
# test skips, so it is not asked for there
if command -v apt-get >/dev/null; then
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${need_apt[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  elif command -v brew >/dev/null; then
    brew install poppler
  else
    echo "setup: please install poppler (pdftoppm, pdfinfo): apt-get install poppler-utils, brew install poppler, or conda install -c conda-forge poppler" >&2
    exit 1
  fi
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install --isolated --disable-pip-version-check -q)
# torch and torchvision must come as a matching pair from PyPI: a stray local CPU-only torch wheel next to PyPI's
# torchvision fails at import ("operator torchvision::nms does not exist"). --isolated ignores local pip config.
if ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "setup: installing torch 2.13.0 + torchvision 0.28.0 (a few GB, a few minutes)"
  "${PIP[@]}" "torch==2.13.0" "torchvision==0.28.0"
fi
echo "setup: installing colpali-milvus and its dev tools into .venv"
"${PIP[@]}" -e ".[dev]"
touch .venv/.installed
