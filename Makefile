# telesurgery_ros — set-up, tests, demo and benchmarks in a self-contained virtualenv.
#   make demo    set up if needed, then run the whole stack (see README)
#   make test    set up if needed, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup test test-long lint clean

setup: $(STAMP)

# Re-installs only when the pinned requirements or the package metadata change.
$(STAMP): requirements.txt setup.py setup.cfg package.xml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --quiet -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)
	@echo "setup: $(VENV) is ready"

test: $(STAMP)
	$(PY) -m pytest -m 'not long' $(PYTEST_ARGS)

test-long: $(STAMP)
	$(PY) -m pytest -m long -s $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m pytest test/test_flake8.py test/test_pep257.py

clean:
	rm -rf build install log .pytest_cache
