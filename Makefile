# rolekeeper: the few targets a user types. Everything installs itself on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := .venv-tools
SAM := $(TOOLS)/sam/bin/sam
CHECKOV := $(TOOLS)/checkov/bin/checkov
PARLIAMENT := $(TOOLS)/parliament/bin/parliament
# aws-sam-translator (make package, and the tests that deploy the packaged template) pins pydantic:
# its own venv, so the dev venv keeps the pydantic the Lambda artifact ships.
TRANSLATOR := $(TOOLS)/translator/bin/python
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
PACKAGED := dist/rolekeeper-$(VERSION).template.json
# sam build needs the function's runtime (python3.13) on PATH; pyenv provides it here.
PY313 := $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin))
export SAM_CLI_TELEMETRY := 0

.PHONY: dev tools test lint format build package demo bench clean sam-local

dev: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

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
	$(TRANSLATOR) -m tools.package --template-only --out dist
	$(TOOLS)/sam/bin/cfn-lint template.yaml examples/*.yaml $(PACKAGED)
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

demo: dev
	$(PY) -m tools.demo

bench: dev
	$(PY) -m tools.bench

# Every file in events/ through `sam local invoke` in a Lambda-like container (README, "Try it in a
# container"). Skips, saying why, where containers cannot run.
sam-local: dev $(SAM)
	bash tools/sam_local.sh $(SAM) $(PY) $(PY313)

clean:
	rm -rf .aws-sam .mypy_cache .ruff_cache .pytest_cache .hypothesis dist
