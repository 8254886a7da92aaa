# `make serve` prepares everything (venv, dependencies, the default model) and runs the service;
# `make test` runs the tests (doing the same set-up first when it has not been done).
PYTHON ?= python3
VENV   ?= .venv
OPENCLIP_VENV ?= .venv-openclip
BIN    := $(VENV)/bin
MODELS := models
export TOKENIZERS_PARALLELISM := false

.PHONY: setup serve test lint default-model clean-model test-containers

setup: $(VENV)/.installed $(OPENCLIP_VENV)/.installed $(MODELS)/default/CURRENT

# torch==2.13.0 is the CPU build (on the CI machines it is installed from local disk); it is
# installed first so that the `train` extra's `torch>=2.3` is already satisfied.
# clip-anytorch is OpenAI's reference code, used only by the parity tests; --no-deps keeps its
# torchvision requirement out (torchvision cannot live beside this torch build).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[server,train,dev,openvino]'
	$(BIN)/pip install --quiet --no-deps clip-anytorch==2.6.0
	touch $@

# A second venv for tests/model/test_import.py: open_clip needs torchvision, which cannot live beside
# the main venv's torch, so open_clip runs here and the test talks to it through files.
$(OPENCLIP_VENV)/.installed:
	$(PYTHON) -m venv $(OPENCLIP_VENV)
	$(OPENCLIP_VENV)/bin/pip install --quiet --upgrade pip
	$(OPENCLIP_VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0 numpy pillow
	touch $@

# The default model: tiny preset, synthetic data (30% drawn in the varied style: configs/default-model.json),
# about 5-8 minutes on 2 CPU cores.
$(MODELS)/default/CURRENT: | $(VENV)/.installed
	$(BIN)/zeroshot train --preset tiny --data synthetic --config configs/default-model.json --out runs/default
	$(BIN)/zeroshot export --checkpoint runs/default/checkpoints/last.pt --out $(MODELS)/default --int8
	$(BIN)/zeroshot eval $(MODELS)/default

default-model: $(MODELS)/default/CURRENT

serve: setup
	$(BIN)/zeroshot serve --host $${HOST:-127.0.0.1} --port $${PORT:-8000}

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/python -m pytest -q

clean-model:
	rm -rf runs/default $(MODELS)/default

# The container test (tests/containers/run.sh, README "Deploy"): builds the server image, runs two
# replicas behind nginx on loopback ports, stops one and publishes a model under load. Installs
# docker.io, debootstrap, nginx and docker-compose with apt when they are missing (root, as in CI).
test-containers: setup
	bash tests/containers/run.sh
