# Two commands for a fresh machine: `make speedrun` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the main job: the assistant (data, ladder, base, SFT, RL, vision, evals); PRESET=cpu is the code-only speedrun
PRESET ?= chat
OUT ?= runs/speedrun
WORKERS ?= 2

.PHONY: speedrun test test-slow bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

speedrun: $(STAMP)
	$(BIN)/glassgpt speedrun --preset $(PRESET) --out $(OUT) --workers $(WORKERS)

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

bench: $(STAMP)
	$(BIN)/python bench/train_vs_peers.py

clean:
	rm -rf $(VENV) runs .pytest_cache
