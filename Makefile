# browser-control: every user-facing job is a make target; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV_PY := .venv/bin/python

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

$(VENV_PY):
	bash scripts/dev_setup.sh

.PHONY: dev-setup
dev-setup: ## Create .venv with the CPU dependencies for tests and benchmarks (pip; see README for uv)
	bash scripts/dev_setup.sh

.PHONY: test
test: $(VENV_PY) ## Run the test suite (real Chromium, real MiniWoB pages, tiny local models)
	$(VENV_PY) -m pytest

.PHONY: lint
lint: $(VENV_PY) ## ruff on the Python code
	$(VENV_PY) -m ruff check src tests benchmarks
