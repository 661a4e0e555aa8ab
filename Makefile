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

.PHONY: setup demo test clean kuberay constraints

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,openvino]'
	touch $@

setup: $(VENV)/.installed
	scripts/install-system-deps.sh

demo: setup
	$(VENV)/bin/percept demo $(if $(DURATION),--duration $(DURATION),)

test: $(VENV)/.installed
	scripts/install-system-deps.sh --test
	YOLO_OFFLINE=1 $(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# deploy/kuberay/rayservice.yaml's serveConfigV2 = `percept build -c configs/cluster.yaml --http-host 0.0.0.0`
kuberay: $(VENV)/.installed
	$(VENV)/bin/python scripts/kuberay-manifest.py

# docker/constraints.txt: the tested venv's versions of pyproject's dependencies, for docker/Dockerfile
constraints: $(VENV)/.installed
	$(VENV)/bin/python scripts/docker-constraints.py

clean:
	rm -rf $(VENV) .percept *.egg-info
