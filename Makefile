# Two commands on a fresh machine: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# One stamp per set of extras: `make run` installs only what running needs (a few MB);
# `make test` adds the test extras (bpy alone is 821 MB), `make bench` the plotting ones.
RUN_STAMP   := $(VENV)/.installed-run
TEST_STAMP  := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench
# bpy 5.1-5.3 exist only for Python 3.13: a second venv for the tests of that Blender line.
PYTHON313 ?= $(shell pyenv prefix 3.13.0 2>/dev/null | head -n 1)/bin/python3.13
VENV313   := .venv-bpy313
STAMP313  := $(VENV313)/.installed-bpy-5.3.0

.PHONY: run run-probes test install bench bench-quick soak addon clean reliability

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(BENCH_STAMP): $(TEST_STAMP)
	$(PY) -m pip install --quiet -e '.[bench]'
	touch $@

# Without Python 3.13 the bpy 5.3 tests skip, except under CI=true, where it is a failure.
$(STAMP313):
	@if [ -x "$(PYTHON313)" ]; then \
	  set -e; rm -rf $(VENV313); $(PYTHON313) -m venv $(VENV313); \
	  $(VENV313)/bin/python -m pip install --quiet bpy==5.3.0; touch $@; \
	elif [ "$$CI" = true ]; then \
	  echo "make test: no Python 3.13 at '$(PYTHON313)' (pyenv install 3.13.0, or PYTHON313=/path/to/python3.13)"; exit 1; \
	else \
	  echo "make test: no Python 3.13 at '$(PYTHON313)': the bpy 5.3.0 tests will be skipped"; \
	fi

install: $(RUN_STAMP)

## Aggregator, every enabled probe, and a live terminal view. Ctrl+C stops all of them.
run: $(RUN_STAMP)
	$(VENV)/bin/md-health up

## The probes alone, under their supervisor.
run-probes: $(RUN_STAMP)
	$(VENV)/bin/md-probes run-all

## The whole test suite (real sockets, real processes, real bpy).
test: $(TEST_STAMP) $(STAMP313)
	$(PY) -m pytest -q --durations=15

## Blender add-on: per platform, an extension zip (4.2-5.3) and a legacy zip (3.4-4.1), each with its wheels
## (downloads cached in build/wheels). Needs bpy for Blender's extension tool, hence the test extras.
addon: $(TEST_STAMP)
	$(PY) blender_ui/build.py

## Measured performance against same-run baselines: table, bench/results.json, plots, README section (< 10 min).
bench: $(BENCH_STAMP)
	$(PY) -m bench

## A reduced bench for development (< 1 min); writes bench/out/quick/ only.
bench-quick: $(BENCH_STAMP)
	$(PY) -m bench --quick

## The full soak: 500 simulated services at 1 Hz for 10 minutes against a real aggregator;
## prints the figures, fails on a missed target, and adds them to docs/reliability.md.
soak: $(TEST_STAMP)
	MD_HEALTH_WRITE_DOCS=1 $(PY) -m bench.soak --record

## Re-run every test that records a figure (the `measured` fixture) and regenerate docs/reliability.md from them.
RELIABILITY_TESTS = $(shell grep -l 'measured.record' tests/test_*.py)
reliability: $(TEST_STAMP)
	MD_HEALTH_WRITE_DOCS=1 $(PY) -m pytest -q $(RELIABILITY_TESTS)

clean:
	rm -rf $(VENV) $(VENV313) .pytest_cache build *.egg-info
