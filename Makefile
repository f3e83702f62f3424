# Two commands on a fresh machine: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run run-probes test install bench bench-quick soak addon clean reliability

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

## Aggregator, every enabled probe, and a live terminal view. Ctrl+C stops all of them.
run: $(STAMP)
	$(VENV)/bin/md-health up

## The probes alone, under their supervisor.
run-probes: $(STAMP)
	$(VENV)/bin/md-probes run-all

## The whole test suite (real sockets, real processes, real bpy).
test: $(STAMP)
	$(PY) -m pytest -q

## Blender add-on: extension zips per platform (4.2+, wheels bundled) and a legacy zip (3.4-4.1), validated.
addon: $(STAMP)
	$(PY) blender_ui/build.py

## Measured performance against same-run baselines: table, bench/results.json, plots, README section (< 10 min).
bench: $(STAMP)
	$(PY) -m bench

## A reduced bench for development (< 1 min); writes bench/out/quick/ only.
bench-quick: $(STAMP)
	$(PY) -m bench --quick

## The full soak: 500 simulated services at 1 Hz for 10 minutes against a real aggregator;
## prints the figures, fails on a missed target, and adds them to docs/reliability.md.
soak: $(STAMP)
	MD_HEALTH_WRITE_DOCS=1 $(PY) -m bench.soak --record

## Re-run the fault, bad-input and security tests and regenerate docs/reliability.md from them.
reliability: $(STAMP)
	MD_HEALTH_WRITE_DOCS=1 $(PY) -m pytest -q tests/test_fuzz_*.py tests/test_reliability_*.py tests/test_security*.py tests/test_soak.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
