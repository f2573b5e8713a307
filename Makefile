# votemesh — every target creates/uses .venv and installs what it needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := mosquitto corosync corosync-qnetd corosync-qdevice corosync-vqsim libnss3-tools \
  iproute2 iptables openssh-server openssh-client

.PHONY: help demo demo-corosync wire-tour test lint format ci bench bench-lab soak fuzz system-deps deb clean chaos

help:
	@echo "make demo         live demo: 4 votemesh agents + votemesh-qnetd: split, loss, kill, rejoin (root)"
	@echo "make demo-corosync  live demo: a corosync cluster arbitrated by votemesh-qnetd, split and healed (root)"
	@echo "make wire-tour    every qnetd protocol message, decoded, against Debian's corosync-qnetd (root)"
	@echo "make test         the whole test suite (root runs the namespace and interop tests too)"
	@echo "make lint         ruff format --check, ruff check, mypy --strict"
	@echo "make ci           lint + test, as CI runs them"
	@echo "make bench        benchmarks: print figures, never fail on timing (one: $(PY) -m tests.bench cli)"
	@echo "                 (BENCH_SCALE_LONG=1: the scaling bench's 10-minute idle and 10 kills at 32 agents)"
	@echo "make bench-lab    votemesh vs corosync+qdevice+qnetd in the lab, one table (root; ~5-6 h, BENCH_LAB_QUICK=1 ~25 min)"
	@echo "make soak         100,000 random fault schedules through the simulator (about an hour; SOAK_RUNS=N, SOAK_FIRST=seed)"
	@echo "make fuzz         differential fuzz vs corosync-qnetd, 5,000 cases (~5 min; FUZZ_CASES=N FUZZ_SEED=S; root)"
	@echo "make chaos        every library scenario through votemesh-lab run, reports in lab-store/ (~30 min; CHAOS=\"split-3-2 ...\"; root)"
	@echo "make deb          dist/votemesh_VERSION_ARCH.deb: the project + its dependencies in /opt/votemesh (Debian; DEB_OUT=DIR)"
	@echo "make system-deps  apt-get install $(APT_PACKAGES) (root, Debian)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev,lab]'
	@touch $@

# Installs Debian's corosync stack and mosquitto when we are root on Debian and they are missing;
# otherwise says what the tests that need them will do.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing:$$missing"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } >/dev/null; \
	else \
	  echo "note: not installed:$$missing -- tests that need them will be skipped (run as root on Debian to install)"; \
	fi

demo: system-deps $(VENV)/.installed
	$(PY) -m votemesh_lab.demo

demo-corosync: system-deps $(VENV)/.installed
	$(PY) -m votemesh_lab.demo_corosync

wire-tour: system-deps $(VENV)/.installed
	$(PY) -m tests.interop.wire_tour

test: system-deps $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

ci: lint test

bench: $(VENV)/.installed
	$(PY) -m tests.bench

# Side by side with corosync (docs/benchmarks.md): one stack at a time in the namespace lab.
bench-lab: system-deps $(VENV)/.installed
	$(PY) -m tests.bench lab_corosync

SOAK_RUNS ?= 100000
SOAK_FIRST ?= 0
soak: $(VENV)/.installed
	$(PY) -m votemesh_lab.sim.soak --runs $(SOAK_RUNS) --first-seed $(SOAK_FIRST) --workers 2

# FUZZ_SEED defaults to the clock so every run explores new cases; a failing case prints the
# FUZZ_CASE_SEED that replays it alone.
FUZZ_CASES ?= 5000
FUZZ_SEED ?= $(shell date +%s)
fuzz: system-deps $(VENV)/.installed
	@echo "differential fuzz: FUZZ_SEED=$(FUZZ_SEED) FUZZ_CASES=$(FUZZ_CASES)"
	FUZZ_CASES=$(FUZZ_CASES) FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest -q -s -p no:cacheprovider \
	  tests/interop/test_qnetd_differential_fuzz.py

# The whole scenario library (docs/lab.md "Scenarios"), one run after another; each run's
# report.json, timeline.jsonl, timeline.png and logs land in lab-store/<scenario>/<UTC>-s<seed>/.
# Exit status: 0 when every verdict is valid. CHAOS="split-3-2 bridge" runs only those.
CHAOS ?=
chaos: system-deps $(VENV)/.installed
	$(PY) -m votemesh_lab.runner --out lab-store $(CHAOS)

# A Debian package (docs/install.md): prints its path on the last line.
DEB_OUT ?= dist
deb: $(VENV)/.installed
	@bash deploy/debian/build-deb.sh $(DEB_OUT)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
