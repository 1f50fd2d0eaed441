#!/usr/bin/env bash
# Notebooks are the source of truth: exporting and cleaning them, and regenerating README.md from nbs/index.ipynb,
# must change nothing. Fails with the diff otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
snap=$(mktemp -d); trap 'rm -rf "$snap"' EXIT
cp -r colpali_milvus nbs README.md "$snap"/
"$BIN"/nbdev_export
"$BIN"/nbdev_clean
"$BIN"/python scripts/make_readme.py
ok=1
diff -ru -x __pycache__ -x '*.egg-info' -x data "$snap"/colpali_milvus colpali_milvus || ok=0
diff -ru -x .ipynb_checkpoints "$snap"/nbs nbs || ok=0
diff -u "$snap"/README.md README.md || ok=0
if [ $ok = 1 ]; then echo "sync-check: notebooks, package and README agree"; else
  echo "sync-check: out of sync (the changes above were just written): review them, then commit" >&2; exit 1; fi
