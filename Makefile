# Everything runs from a project virtualenv that `make install` builds from the pinned requirements.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test stack-up stack-down demo package bench clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip<26.3"  # chalice 1.34 wants pip<26.3
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

stack-up: $(STAMP)
	$(PY) -m devstack up

stack-down:
	$(PY) -m devstack down

demo: $(STAMP)
	$(PY) -m devstack.demo

# SAM (dist/sam) and Terraform (dist/terraform) packages of a stage, cfn-lint, the zip size.
STAGE ?= prod
package: $(STAMP)
	$(PY) deploy/package.py --stage $(STAGE) --out dist

# Issue 6 benchmarks (docs/performance.md): BENCH_QUICK=1 for short counts;
# BENCH_ARGS="--save LABEL", "--rev REV", "--only 1,4"; `python -m bench compare A B`.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf .stack dist .pytest_cache
