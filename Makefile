# Two commands for a newcomer: `make demo` serves the demo model, `make test` runs the tests.
# Both create .venv and install on first use, and are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
ASSETS ?= assets/demo
# The CPU build of torch; an unpinned torch pulls a multi-GB CUDA build. Override for GPU hosts.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: help install demo test lint proto proto-check demo-assets clean

help:
	@echo "make demo   - install, build the demo assets if missing, serve the demo model"
	@echo "make test   - install (dev + shard + ray extras), ruff check, pytest"
	@echo "make proto  - regenerate the gRPC stubs from proto/*.proto"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): $(PY) pyproject.toml Makefile
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev,shard,ray]"
	$(PIP) install --quiet --no-deps "text-generation==0.7.0"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(VENV)/bin/pytest -m "not gpu" $(PYTEST_ARGS)

proto: install
	$(PY) proto/gen.py

proto-check: install
	$(PY) proto/gen.py --check

# The command itself is idempotent: it returns in seconds when $(ASSETS)/manifest.json matches the
# request and builder version, and resumes an interrupted or outdated build otherwise.
demo-assets: install
	$(VENV)/bin/chameleon demo-assets $(ASSETS)

demo: install demo-assets
	$(VENV)/bin/chameleon launch --model-id $(ASSETS)/model --adapter-dir $(ASSETS)/adapters

# Container images without a Docker engine or registry: buildah builds docker/Dockerfile.router and
# docker/Dockerfile.shard-cpu from a Debian bookworm base made by debootstrap (root; cached under
# IMAGE_CACHE, keyed by what goes in it), with the torch wheel of TORCH_SPEC. On a Docker host,
# `docker build` with the Dockerfiles' default bases does the same (README, "Run with Docker").
IMAGE_CACHE ?= $(HOME)/.cache/chameleon/images
IMAGE_BASE ?= localhost/chameleon-base:bookworm

.PHONY: images
images: $(PY)
	PIP="$(PIP)" TORCH_SPEC="$(TORCH_SPEC)" IMAGE_CACHE="$(IMAGE_CACHE)" IMAGE_BASE="$(IMAGE_BASE)" \
		bash docker/images.sh

clean:
	rm -rf $(VENV) build *.egg-info

# The prepared GPU check (scripts/gpu_check.sh, under 8 minutes on one H100, no network): the gpu-marked
# tests, the Triton kernel bench and bench-shard on a random Llama-7B, results as JSON in $(GPU_CHECK_OUT).
# No install: the machine's own PYTHON. GPU_CHECK_ARGS=--dry-run runs the same stages on CPU (tiny model).
GPU_CHECK_OUT ?= gpu-check-out

.PHONY: gpu-check
gpu-check:
	PYTHON="$(PYTHON)" bash scripts/gpu_check.sh $(GPU_CHECK_ARGS) $(GPU_CHECK_OUT)
