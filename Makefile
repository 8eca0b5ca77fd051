# fxprune: `make demo`, `make test`, `make bench`.
# The virtual environment is .venv; installing into it happens once (a stamp file records it) and
# again only when pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fxprune-test-installed
BSTAMP := $(VENV)/.fxprune-bench-installed
BENCH_ARGS ?=

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -e '.[test]'
	touch $@

$(BSTAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install -e '.[test,bench]'
	touch $@

demo: $(STAMP)
	$(VENV)/bin/fxprune prune resnet50 --ratio 0.5

test: $(STAMP)
	$(PY) -m pytest -q -x -p no:cacheprovider

bench: $(BSTAMP)
	$(PY) benchmarks/zoo.py $(BENCH_ARGS)

clean:
	rm -f $(STAMP) $(BSTAMP)
	rm -rf build *.egg-info
