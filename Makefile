# rolekeeper: the few targets a user types. Everything installs itself on first use.
SHELL := /bin/bash
# The tool venvs (.venv-tools) run on the machine's python3.
PYTHON ?= python3
# The dev venv (make dev, test, lint, demo) runs the functions' runtime, Python 3.13: python3.13 on
# PATH if it runs, else pyenv's. `make dev PYTHON313=/path/to/python3.13` to choose another.
ifndef PYTHON313
PYTHON313 := $(shell for p in python3.13 $(HOME)/.pyenv/versions/3.13*/bin/python3.13; do \
  "$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' >/dev/null 2>&1 && { command -v "$$p"; break; }; done)
endif
VENV := .venv
PY := $(VENV)/bin/python
# uv.lock pins every dependency with hashes (make lock); make dev installs its export.
DEV_LOCK := requirements-dev.txt
UV := $(VENV)/bin/uv
TOOLS := .venv-tools
SAM := $(TOOLS)/sam/bin/sam
CHECKOV := $(TOOLS)/checkov/bin/checkov
PARLIAMENT := $(TOOLS)/parliament/bin/parliament
# aws-sam-translator (make package, and the tests that deploy the packaged template) pins pydantic:
# its own venv, so the dev venv keeps the pydantic the Lambda artifact ships.
TRANSLATOR := $(TOOLS)/translator/bin/python
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# make lint checks the packaged template's shape (pinned to no code) outside dist/, where a
# release made by make package stays as published.
PACKAGED := build/lint/rolekeeper-$(VERSION).template.json
# sam build needs the function's runtime (python3.13) on PATH; pyenv provides it here.
PY313 := $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin))
export SAM_CLI_TELEMETRY := 0

.PHONY: dev lock tools test lint format build package forwarder demo bench clean sam-local

dev: $(VENV)/.installed

$(VENV)/.installed: $(DEV_LOCK) pyproject.toml
	$(if $(PYTHON313),,$(error Python 3.13 (the functions' runtime) not found: install it (pyenv install 3.13, or your system's python3.13 package) or pass PYTHON313=/path/to/python3.13))
	$(PYTHON313) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r $(DEV_LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# After editing the dependencies in pyproject.toml: re-resolve uv.lock (one resolution for every
# platform and Python the project supports, hashes of every wheel) and export it for pip:
# src/requirements.txt (the Lambda artifact: sam build, make package) and requirements-dev.txt
# (make dev). `make lock UV_LOCK_ARGS=--upgrade` moves every pin to the newest allowed release.
lock: dev
	$(UV) lock $(UV_LOCK_ARGS)
	$(UV) export --quiet --frozen --no-emit-project --output-file src/requirements.txt
	$(UV) export --quiet --frozen --no-emit-project --extra dev --output-file $(DEV_LOCK)

# aws-sam-cli, checkov and parliament pin old boto3 and clash with each other: one venv each.
$(SAM):
	$(PYTHON) -m venv $(TOOLS)/sam && $(TOOLS)/sam/bin/pip install --quiet aws-sam-cli
$(CHECKOV):
	$(PYTHON) -m venv $(TOOLS)/checkov && $(TOOLS)/checkov/bin/pip install --quiet checkov
$(PARLIAMENT):
	$(PYTHON) -m venv $(TOOLS)/parliament && $(TOOLS)/parliament/bin/pip install --quiet parliament
$(TRANSLATOR):
	$(PYTHON) -m venv $(TOOLS)/translator && $(TOOLS)/translator/bin/pip install --quiet aws-sam-translator pyyaml

tools: $(SAM) $(CHECKOV) $(PARLIAMENT) $(TRANSLATOR)

test: dev $(TRANSLATOR)
	$(PY) -m pytest

lint: dev tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(SAM) validate --lint --template template.yaml
	$(TRANSLATOR) -m tools.package --template-only --out $(dir $(PACKAGED))
	$(TOOLS)/sam/bin/cfn-lint template.yaml examples/*.yaml $(PACKAGED)
	# rolekeeper's own rule (E9101: the function's validation of its custom resources, docs/validate.md)
	PYTHONPATH=src $(TOOLS)/sam/bin/cfn-lint --append-rules rolekeeper.cfnlint_rules -- examples/*.yaml
	$(CHECKOV) --quiet --compact --skip-download --framework cloudformation --file template.yaml --file examples/iam-events-forwarder.yaml --file examples/batch-platform.yaml --file examples/org-hub.yaml --file $(PACKAGED)
	$(PY) -m tools.policies | $(TOOLS)/parliament/bin/python tools/parliament_check.py

format: dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

build: $(SAM)
	PATH="$(PY313):$$PATH" $(SAM) build --template template.yaml

# The StackSets-ready release in dist/: template without Transform, arm64 code zip, publish steps.
package: $(TRANSLATOR)
	$(TRANSLATOR) -m tools.package --out dist

# Outside us-east-1 rolekeeper heals on its schedule only: IAM's CloudTrail events reach
# EventBridge in us-east-1 alone. This deploys examples/iam-events-forwarder.yaml there, in the
# account your AWS credentials name, to forward them to rolekeeper's region (docs/healing-latency.md):
#   make forwarder REGION=eu-west-1 [BUS=<event bus ARN, default: that region's default bus>]
FORWARDER_STACK ?= rolekeeper-iam-forwarder
forwarder:
	$(if $(REGION),,$(error REGION is the region rolekeeper runs in: make forwarder REGION=eu-west-1))
	$(if $(filter us-east-1,$(REGION)),$(error rolekeeper in us-east-1 receives IAM events itself: no forwarder needed))
	aws cloudformation deploy --region us-east-1 --stack-name $(FORWARDER_STACK) \
	  --template-file examples/iam-events-forwarder.yaml --capabilities CAPABILITY_IAM \
	  --no-fail-on-empty-changeset --parameter-overrides TargetRegion=$(REGION) $(if $(BUS),TargetEventBusArn=$(BUS))

demo: dev
	$(PY) -m tools.demo

bench: dev
	$(PY) -m tools.bench

# Every file in events/ through `sam local invoke` in a Lambda-like container (README, "Try it in a
# container"). Skips, saying why, where containers cannot run.
sam-local: dev $(SAM)
	bash tools/sam_local.sh $(SAM) $(PY) $(PY313)

clean:
	rm -rf .aws-sam .mypy_cache .ruff_cache .pytest_cache .hypothesis dist build
