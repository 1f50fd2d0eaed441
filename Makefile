# colpali-milvus: `make demo` runs the main job, `make test` runs every check. Both set up a fresh machine first.
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test setup sync-check lint nbtest pytest clean

$(VENV)/.installed: settings.ini setup.py scripts/setup.sh
	bash scripts/setup.sh

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/colpali-milvus demo --db demo_out/demo.db

test: $(VENV)/.installed
	$(MAKE) sync-check lint nbtest pytest

# Notebooks are the source: exporting them must not change the package, and they must be clean.
sync-check:
	BIN=$(BIN) bash scripts/check_sync.sh

# ruff on the sources: notebooks (the package is exported from them), tests, benchmarks, scripts (pyproject.toml)
lint:
	$(BIN)/ruff check nbs tests bench scripts

nbtest:
	HF_HUB_OFFLINE=1 $(BIN)/nbdev_test --n_workers 2 --timing

pytest:
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest tests -q -p no:cacheprovider --timeout 600

clean:
	rm -rf demo_out _proc
