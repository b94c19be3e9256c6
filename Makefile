# The two set-up commands of the README: `make demo` (main job on the embedded default)
# and `make test`. Both install the project first (CPU build of torch, see constraints-cpu.txt).
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install demo test

install:
	$(PIP_INSTALL) -e ".[dev]" -c constraints-cpu.txt

demo: install
	llamanas run --out runs/demo

test: install
	$(PYTHON) -m pytest -q
