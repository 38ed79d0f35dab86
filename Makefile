# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs rldskit with every extra (about 4 GB, a few minutes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.rldskit-installed

EDGE_VENV := .venv-edge

.PHONY: demo test test-fast test-edge-alone bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m rldskit.demo --out demo_out

test: $(STAMP) test-edge-alone
	$(PY) -m pytest -q

# The edge runtime installed alone (numpy + cryptography, as on a robot) into its own venv, and its
# standalone tests run there from outside the checkout, where rldskit cannot be imported.
test-edge-alone:
	test -x $(EDGE_VENV)/bin/python || $(PYTHON) -m venv $(EDGE_VENV)
	rm -rf $(EDGE_VENV)/src && mkdir -p $(EDGE_VENV)/src && cp -r edge_runtime $(EDGE_VENV)/src/edge_runtime
	$(EDGE_VENV)/bin/python -m pip install --quiet $(EDGE_VENV)/src/edge_runtime pytest hypothesis
	cd $(EDGE_VENV) && bin/python -m pytest -q -p no:cacheprovider --rootdir=$(CURDIR)/tests_edge $(CURDIR)/tests_edge

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/validate.py

clean:
	rm -rf demo_out bench_out .pytest_cache .hypothesis $(EDGE_VENV)
