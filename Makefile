# telesurgery_ros — set-up, tests, demo and benchmarks in a self-contained virtualenv.
#   make demo    set up if needed, then run the whole stack (see README)
#   make test    set up if needed, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup test test-long lint clean demo system-packages

setup: system-packages $(STAMP)

# System packages of the GUI (arm_viewer) and its tests: an X server for headless machines,
# Mesa's software OpenGL, and xdotool (the tests type into the viewer's window). Installed
# with apt-get when missing and we are root (as CI is); elsewhere the one command is printed.
SYSTEM_PACKAGES := xvfb libgl1-mesa-dri xdotool
system-packages:
	@missing=; for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || \
		missing="$${missing:+$$missing }$$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "setup: the viewer and its tests need: $$missing (Debian names; no apt-get here)"; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "setup: installing system packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing; \
	else \
		echo "setup: the viewer and its tests need system packages; run:" \
			"sudo apt-get install --no-install-recommends $$missing"; \
	fi

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

test: system-packages $(STAMP)
	$(PY) -m pytest -m 'not long' $(PYTEST_ARGS)

test-long: system-packages $(STAMP)
	$(PY) -m pytest -m long -s $(PYTEST_ARGS)

# make demo [DURATION=30] [GUI=1] [INPUT=joy] [PROFILE=rome_beijing_2024] [SITES=2]: the whole
# stack with the scripted surgeon motion; DURATION=0 runs until Ctrl-C. Writes runs/<timestamp>/.
# GUI=1 opens the arm_viewer window (a private Xvfb when there is no display); INPUT=joy hands
# the controls to the viewer's keys instead of the script. SITES=2: the two sites in two ROS
# domains, joined by site_link over mutual TLS on loopback.
DURATION ?= 30
PROFILE  ?= rome_beijing_2024
GUI      ?= 0
INPUT    ?= trajectory
SITES    ?= 1
demo: system-packages $(STAMP)
	$(PY) -m telesurgery_ros.demo --duration $(DURATION) --profile $(PROFILE) \
		--input $(INPUT) $(if $(filter 1 true yes,$(GUI)),--gui,) --sites $(SITES)

lint: $(STAMP)
	$(PY) -m pytest test/test_flake8.py test/test_pep257.py

clean:
	rm -rf build install log .pytest_cache

# make bench: every benchmark suite (under 10 minutes on 2 cores), results (JSON, PNG, logs)
# in bench_results/<UTC time>/; the README section: telesurgery-bench report <that dir>.
.PHONY: bench
bench: $(STAMP)
	$(PY) -m telesurgery_ros.bench all --out bench_results/$$(date -u +%Y%m%dT%H%M%SZ) $(BENCH_ARGS)
