# The two commands a newcomer needs:  make demo  and  make test.
# Both set everything up themselves (Debian packages, a virtualenv, the project).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
SHARED ?= $(abspath ../shared)
# Offline machines: models and sample clips sit beside the repo in ../shared when it exists.
export PERCEPT_MODELS_DIR ?= $(if $(wildcard $(SHARED)/models),$(SHARED)/models,)
export PERCEPT_SAMPLE_VIDEOS ?= $(if $(wildcard $(SHARED)/data/videos),$(SHARED)/data/videos,)
export PERCEPT_SHARED ?= $(SHARED)
PYTEST_ARGS ?=
BENCH_ARGS ?=
# CPU-only torch wheels (PyPI's bring CUDA's libraries: ~4 GB of nvidia-* and triton), as docker/Dockerfile's
# build argument: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: setup demo demo-models test test-fast bench clean kuberay constraints

# pinned to docker/constraints.txt: every clone (and CI) gets the versions the tests ran with, as the
# Docker images do; to upgrade, install without -c, run the tests, then `make constraints`
$(VENV)/.installed: pyproject.toml docker/constraints.txt
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || scripts/install-system-deps.sh --venv
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),) -c docker/constraints.txt -e '.[test,openvino]'
	touch $@

setup: $(VENV)/.installed
	scripts/install-system-deps.sh

# the models folder checked first: without it, nothing is installed
demo-models:
	@[ -n "$(PERCEPT_MODELS_DIR)" ] && [ -d "$(PERCEPT_MODELS_DIR)" ] || { echo "make: no models folder: put the shared folder beside the repo ($(SHARED)) or set PERCEPT_MODELS_DIR to one (got '$(PERCEPT_MODELS_DIR)')" >&2; exit 2; }

demo: demo-models
	$(MAKE) setup
	YOLO_OFFLINE=1 $(VENV)/bin/percept demo $(if $(DURATION),--duration $(DURATION),) $(if $(HTTP_PORT),--http-port $(HTTP_PORT),)

# `percept bench` on the shared clips and models (RTSP cameras: GStreamer's server, as for the tests)
bench: demo-models $(VENV)/.installed
	scripts/install-system-deps.sh --test
	YOLO_OFFLINE=1 $(VENV)/bin/percept bench $(BENCH_ARGS)

test: $(VENV)/.installed
	scripts/install-system-deps.sh --test
	YOLO_OFFLINE=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# the fast lane while working: every test but those marked integration (Ray Serve graphs, RTSP
# clusters, the bench); CI runs them all (make test)
test-fast: $(VENV)/.installed
	scripts/install-system-deps.sh --test
	YOLO_OFFLINE=1 $(VENV)/bin/python -m pytest -m "not integration" $(PYTEST_ARGS)

# deploy/kuberay/rayservice.yaml's serveConfigV2 = `percept build -c configs/kuberay.yaml --http-host 0.0.0.0`
kuberay: $(VENV)/.installed
	$(VENV)/bin/python scripts/kuberay-manifest.py

# docker/constraints.txt: the tested venv's versions of pyproject's dependencies, for docker/Dockerfile.
# It needs the venv only, as it is: not $(VENV)/.installed, whose recipe (pyproject.toml edited, as an
# upgrade does) would first reinstall with the old pins and so write them again
constraints: | $(VENV)/bin/python
	$(VENV)/bin/python scripts/docker-constraints.py

$(VENV)/bin/python:
	@echo "make: no virtualenv at $(VENV): \`make setup\` (or install the upgrade without -c) first; constraints are read from it" >&2; exit 2

clean:
	rm -rf $(VENV) .percept *.egg-info
