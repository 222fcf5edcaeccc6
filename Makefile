# One place that installs bench reproducibly and runs it; README and CI call these targets.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: install demo test bench-perf golden hific-env

# Reuses an existing venv; reinstalls only when the lock file or pyproject changed.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24,<27"
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# The default benchmark: JPEG and WebP on photos shipped inside scikit-image (no download).
demo: install
	$(VENV)/bin/bench run --out runs/default

# glibc malloc settings of bench/tuning.py (the bench command sets them itself).
TUNED := MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296

# HiFiC runs TensorFlow 2.14 in its own venv (~1 min, ~1.9 GB; reused while its lock is unchanged).
hific-env: install
	$(PY) -m bench.codecs.hific.env

test: install hific-env
	$(TUNED) $(PY) -m pytest -q

# Speed ratios (not a test): harness overhead, resume cost, worker scaling.
bench-perf: install
	$(TUNED) $(PY) benchmarks/perf.py

# Recompute the full Kodak golden table in results/ (slow: ~30 min with 2 workers).
golden: install
	$(TUNED) $(PY) -m bench.golden --write
