# Everything runs from a project virtualenv that `make install` builds from the pinned requirements.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: install checkov-venv test test-fast stack-up stack-down demo client package bench fuzz faults soak clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "$(PYTHON) is Python " + sys.version.split()[0] + ": the set-up needs Python 3.11+ (the pinned server requirements and tomllib); give one, e.g. make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip<26.3"  # chalice 1.34 wants pip<26.3
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# checkov pins its own dependencies (boto3 1.35, networkx 2, packaging 23, bc-python-hcl2 as
# `hcl2`), which conflict with the project's: it gets a virtualenv of its own.
CHECKOV_VENV  ?= .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-stamp
$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)

checkov-venv: $(CHECKOV_STAMP)

test: $(STAMP) $(CHECKOV_STAMP)
	$(PY) -m pytest

# Everything that needs no server (no OpenBao, moto or broker started): the unit tests, the
# stores', the admission's and the audit store's contract on their fakes, the issuance pipeline
# on fakes. Under a minute; the tests marked `stack` (the same suites on DynamoDB) are left out.
FAST_TESTS ?= tests/unit tests/service/test_stores.py tests/service/test_issuance_pipeline.py
test-fast: $(STAMP)
	$(PY) -m pytest $(FAST_TESTS) -m "not stack"

# VAULT_NAMESPACE=team-a (or admin/team-a): every Vault object of the stack (AppRoles, policies,
# KV) inside that namespace, named in .stack/endpoints.json as vault_namespace; the same for the demo.
VAULT_NAMESPACE ?=
NAMESPACE_ARG := $(if $(strip $(VAULT_NAMESPACE)),--vault-namespace '$(strip $(VAULT_NAMESPACE))')

stack-up: $(STAMP)
	$(PY) -m devstack up $(NAMESPACE_ARG)

stack-down:
	$(PY) -m devstack down

demo: $(STAMP)
	$(PY) -m devstack.demo $(NAMESPACE_ARG)

# The client (docs/client.md): dist/secret_zero_broker-VERSION-py3-none-any.whl and the single
# file dist/broker.pyz (Python 3.9+, botocore inside), each with FILE.sha256 beside it; prints the sums.
client: $(STAMP)
	$(PY) deploy/client/build.py --out dist

# SAM (dist/sam) and Terraform (dist/terraform) packages of a stage from deploy/$(STAGE).toml,
# which also writes the stage's environment into .chalice/config.json (for `chalice deploy`);
# cfn-lint, the zip size. Refuses the repository's example values unless ALLOW_PLACEHOLDERS=1.
# And the client (above).
STAGE ?= prod
ALLOW_PLACEHOLDERS ?= 0
package: $(STAMP) client
	$(PY) deploy/package.py --stage $(STAGE) --out dist --write-chalice-config \
	  $(if $(filter-out 0,$(ALLOW_PLACEHOLDERS)),--allow-placeholders)

# Benchmarks 1-10 (docs/performance.md), ending with the NAME VALUE lines; BENCH_QUICK=1 for short counts;
# BENCH_ARGS="--save LABEL", "--rev REV", "--only 1,4"; `python -m bench compare A B`.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# Issue 7 (docs/reliability.md): the long runs of the hostile-input and fault tests.
# fuzz: Schemathesis (FUZZ_EXAMPLES per operation, random seeds) and hypothesis (profile "fuzz").
FUZZ_EXAMPLES ?= 1000
fuzz: $(STAMP)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_RANDOM=1 HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/fuzz tests/unit/test_properties_aws.py tests/unit/test_properties_gcp.py tests/unit/test_properties_rules.py

# faults: every fault test (also the slow ones) with the measured figures printed.
faults: $(STAMP)
	mkdir -p .stack; RELIABILITY_SLOW=1 FAULT_FIGURES=.stack/fault-figures.json $(PY) -m pytest tests/faults; \
	  status=$$?; cat .stack/fault-figures.json; exit $$status

# soak: SOAK_SECONDS (600) of steady issuance with faults every SOAK_FAULT_EVERY (60) s at SOAK_RATE (4/s).
soak: $(STAMP)
	mkdir -p .stack; $(PY) -m tests.soak.soak --out .stack/soak-report.json

clean:
	rm -rf .stack dist build .pytest_cache
