# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs rldskit with every extra (about 4 GB, a few minutes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rldskit-installed

EDGE_VENV := .venv-edge
# Every install below is constrained by the lock (pip-compile output): two fresh machines get the same
# TensorFlow, TFDS, Beam, JAX, Grain and torch. pyproject.toml keeps open ranges for library users.
# Refresh with `make lock`, then run `make test` and commit requirements-lock.txt.
LOCK   := requirements-lock.txt

.PHONY: demo test test-fast test-edge-alone fuzz bench lock clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m rldskit.cli.demo --out demo_out

# Property tests run under the fixed `ci` hypothesis profile (derandomized, no example database): one
# commit is green or red every time. `make fuzz` explores instead (see tests/fuzzing.py).
test: $(STAMP) test-edge-alone
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q

# Random seeds and FUZZ_SCALE (default 20) times each property test's budget; failures are kept in
# .hypothesis/ and replayed first next time. Run it when you change a reader; turn what it finds into an
# explicit @example next to the fix.
FUZZ_SCALE ?= 20
fuzz: $(STAMP)
	HYPOTHESIS_PROFILE=fuzz RLDSKIT_FUZZ_SCALE=$(FUZZ_SCALE) $(PY) -m pytest -q -m property

# The edge runtime installed alone (numpy + cryptography, as on a robot) into its own venv, and its
# standalone tests run there from outside the checkout, where rldskit cannot be imported.
test-edge-alone:
	test -x $(EDGE_VENV)/bin/python || $(PYTHON) -m venv $(EDGE_VENV)
	rm -rf $(EDGE_VENV)/src && mkdir -p $(EDGE_VENV)/src && cp -r edge_runtime $(EDGE_VENV)/src/edge_runtime
	$(EDGE_VENV)/bin/python -m pip install --quiet -c $(LOCK) $(EDGE_VENV)/src/edge_runtime pytest hypothesis
	cd $(EDGE_VENV) && bin/python -m pytest -q -p no:cacheprovider --rootdir=$(CURDIR)/tests_edge $(CURDIR)/tests_edge

test-fast: $(STAMP)
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -q -m "not slow"

# Every benchmark, one after another (each prints rldskit's path, its baseline and their ratio; medians).
BENCHMARKS = validate convert load stats import train edge arrayrecord_compression remote
bench: $(STAMP)
	set -e; for b in $(BENCHMARKS); do echo "== bench/$$b.py"; $(PY) bench/$$b.py; done

# Re-resolve the whole stack to the newest releases pyproject.toml allows (pip-compile, in a throwaway venv,
# with pip's own resolver and index settings, so the CPU torch wheel on local disk is the one locked).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet pip-tools
	.venv-lock/bin/pip-compile --quiet --upgrade --strip-extras --no-emit-index-url --no-emit-find-links \
	    --extra all --extra dev --output-file $(LOCK) pyproject.toml
	sed -i '/^rldskit @ /d' $(LOCK)  # rldskit[...] naming itself; an absolute local path, and not a pin
	rm -rf .venv-lock

clean:
	rm -rf demo_out bench_out .pytest_cache .hypothesis $(EDGE_VENV)
