# telesurgery_ros — set-up, tests, demo and benchmarks in a self-contained virtualenv.
#   make demo    set up if needed, then run the whole stack (see README)
#   make test    set up if needed, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup test test-long lint clean demo

setup: $(STAMP)

# Re-installs only when the pinned requirements or the package metadata change.
$(STAMP): requirements.txt setup.py setup.cfg package.xml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check --quiet -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --quiet --no-deps --no-build-isolation -e .
	@# setup.cfg installs the executables where `ros2 run` looks (lib/telesurgery_ros/);
	@# the user-facing telesurgery-* commands also go on the venv's PATH.
	@for exe in $(VENV)/lib/telesurgery_ros/telesurgery-*; do \
		ln -sf ../lib/telesurgery_ros/$$(basename $$exe) $(VENV)/bin/; done
	@touch $(STAMP)
	@echo "setup: $(VENV) is ready"

test: $(STAMP)
	$(PY) -m pytest -m 'not long' $(PYTEST_ARGS)

test-long: $(STAMP)
	$(PY) -m pytest -m long -s $(PYTEST_ARGS)

# make demo [DURATION=30] [GUI=1] [PROFILE=rome_beijing_2024] [SITES=2]: the whole stack with
# the scripted surgeon motion; DURATION=0 runs until Ctrl-C. Writes runs/<timestamp>/.
# SITES=2: the two sites in two ROS domains, joined by site_link over mutual TLS on loopback.
DURATION ?= 30
PROFILE  ?= rome_beijing_2024
GUI      ?= 0
SITES    ?= 1
demo: $(STAMP)
	$(PY) -m telesurgery_ros.demo --duration $(DURATION) --profile $(PROFILE) \
		$(if $(filter 1 true yes,$(GUI)),--gui,) --sites $(SITES)

lint: $(STAMP)
	$(PY) -m pytest test/test_flake8.py test/test_pep257.py

clean:
	rm -rf build install log .pytest_cache

# make bench: every benchmark suite (under 10 minutes on 2 cores), results (JSON, PNG, logs)
# in bench_results/<UTC time>/; the README section: telesurgery-bench report <that dir>.
.PHONY: bench
bench: $(STAMP)
	$(PY) -m telesurgery_ros.bench all --out bench_results/$$(date -u +%Y%m%dT%H%M%SZ) $(BENCH_ARGS)
