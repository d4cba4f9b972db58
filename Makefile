# The two commands a new user needs: `make run` and `make test`.
# Both create (or refresh) the virtual environment in .venv when the dependency files
# change, so a fresh clone needs nothing else.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Arguments passed to the main job, e.g. `make run ARGS="--data usps.npz --k 10"`.
ARGS ?=
# Test processes (pytest-xdist): many tests wait on Ray starting, on subprocess jobs and on
# timeouts, so two share a 2-core machine (23 minutes there, 38 in one process);
# TEST_WORKERS=0 runs the tests in one process.
TEST_WORKERS ?= 2

.PHONY: run test estimator-checks lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) jobs/train_dac.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15 tests

# Every scikit-learn estimator check on deimos_ray.DeepClusterer (about 10 minutes).
estimator-checks: $(STAMP)
	DEIMOS_RAY_ALL_ESTIMATOR_CHECKS=1 $(PY) -m pytest -q tests/test_estimator.py

lint: $(STAMP)
	$(PY) -m ruff check deimos_ray jobs bench tests

bench: $(STAMP)
	$(PY) bench/quality.py

clean:
	rm -rf $(VENV) runs .pytest_cache
