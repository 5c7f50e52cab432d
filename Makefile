# browser-control: every user-facing job is a make target; `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV_PY := .venv/bin/python

# The Docker side: one compose file; the scripts under scripts/ check Docker first and explain failures.
COMPOSE_FILE := docker/compose.yaml
COMPOSE := docker compose -f $(COMPOSE_FILE)
# A file under configs/ for fine-tune-local (CONFIG=... on the command line picks another).
CONFIG ?= lfm2_350m_local.yaml
# NAME: a checkpoint in the checkpoints volume (make checkpoints lists them).
NAME ?=
# Optional for evaluate: the evaluator's defaults apply when empty.
SUITE ?=
EPISODES ?=
# SCREENSHOTS=1: evaluate keeps a screenshot per step for the episode viewer.
SCREENSHOTS ?=
TENSORBOARD_PORT ?= 6006
VIEW_PORT ?= 8050
# NO_BUILD=1: train with the images as they are (offline after a first build).
NO_BUILD ?=
# FORCE=1: checkpoint-download replaces ./checkpoints/NAME.
FORCE ?=
# GPUS=N: fine-tune on N GPUs (accelerate launch, data parallel); ENV_REPLICAS=N: N environment services.
GPUS ?=
ENV_REPLICAS ?=
SCALE_ARGS = $(if $(GPUS),--gpus '$(GPUS)') $(if $(ENV_REPLICAS),--env-replicas '$(ENV_REPLICAS)')
# checkpoint-export: f16, q8_0, q5_k_m, q4_k_m, a comma-separated list or all (empty: q8_0).
QUANT ?=

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}'

$(VENV_PY):
	bash scripts/dev_setup.sh

.PHONY: dev-setup
dev-setup: ## Create .venv with the CPU dependencies for tests and benchmarks (pip; see README for uv)
	bash scripts/dev_setup.sh

# --durations: the slowest tests are listed at the end of every run (and CI log), so a test that starts to
# cost minutes is seen where it happens. TEST_WORKERS pytest-xdist processes, a test file each at a time
# (--dist loadfile: a module's shared service stays in one process); TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
.PHONY: test
test: $(VENV_PY) ## Run the test suite (real Chromium, real MiniWoB pages, tiny local models)
	$(VENV_PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

# The inner loop: everything but the tests marked slow (training runs, the demo, the fuzz, fault injection,
# model evaluation) and the learning check; README's Tests section says what that leaves out.
.PHONY: test-fast
test-fast: $(VENV_PY) ## Run the fast tests only (minutes): no training runs, demo, fuzz or fault injection
	$(VENV_PY) -m pytest -m "not slow and not learning" -x -q

.PHONY: demo
demo: $(VENV_PY) ## Train and evaluate a tiny agent on this CPU in a few minutes: no GPU, Docker or download
	$(VENV_PY) -m browser_control demo

.PHONY: lint
lint: $(VENV_PY) ## ruff (checks and formatting) on the Python code, shellcheck on scripts/, hadolint on the Dockerfiles
	$(VENV_PY) -m ruff check src tests benchmarks
	$(VENV_PY) -m ruff format --check src tests benchmarks
	.venv/bin/shellcheck -x scripts/*.sh
	.venv/bin/hadolint docker/*/Dockerfile

# Not listed by help: the check every Docker target runs first, for a clear error without Docker.
.PHONY: docker-check
docker-check:
	@bash scripts/docker_check.sh >/dev/null

.PHONY: docker-build
docker-build: docker-check ## Build the browsergym, training and tensorboard images
	$(COMPOSE) --profile tensorboard build

.PHONY: fine-tune-local
fine-tune-local: ## Train with configs/CONFIG (default lfm2_350m_local.yaml); GPUS=N, ENV_REPLICAS=N to scale
	bash scripts/train.sh --config '$(CONFIG)' $(if $(NO_BUILD),--no-build) $(SCALE_ARGS)

.PHONY: fine-tune-local-full
fine-tune-local-full: ## fine-tune-local with configs/lfm2_350m_local_full.yaml (full fine-tune)
	bash scripts/train.sh --config lfm2_350m_local_full.yaml $(if $(NO_BUILD),--no-build) $(SCALE_ARGS)

.PHONY: fine-tune-local-lora
fine-tune-local-lora: ## fine-tune-local with configs/lfm2_350m_local_lora.yaml (LoRA adapters)
	bash scripts/train.sh --config lfm2_350m_local_lora.yaml $(if $(NO_BUILD),--no-build) $(SCALE_ARGS)

.PHONY: tensorboard
tensorboard: docker-check ## Start TensorBoard on the training logs and print its URL
	TENSORBOARD_PORT='$(TENSORBOARD_PORT)' $(COMPOSE) --profile tensorboard up --detach --build --wait tensorboard
	@echo "TensorBoard: http://127.0.0.1:$(TENSORBOARD_PORT)/"

.PHONY: view
view: docker-check ## Start the episode viewer on the logs and checkpoints volumes and print its URL
	VIEW_PORT='$(VIEW_PORT)' $(COMPOSE) --profile view up --detach --build --wait view
	@echo "Episode viewer: http://127.0.0.1:$(VIEW_PORT)/"

.PHONY: checkpoints
checkpoints: ## List the checkpoints in the volume: name, size, date
	bash scripts/download_checkpoint.sh --list

.PHONY: checkpoint-download
checkpoint-download: ## Copy NAME=<checkpoint> into ./checkpoints/NAME and verify it (SHA-256)
	bash scripts/download_checkpoint.sh '$(NAME)' $(if $(FORCE),--force)

.PHONY: checkpoint-export
checkpoint-export: ## Write GGUF files of NAME=<checkpoint> for llama.cpp [QUANT=q8_0|f16|q5_k_m|q4_k_m|all] beside it
	bash scripts/export_gguf.sh '$(NAME)' $(if $(QUANT),--quant '$(QUANT)')

.PHONY: evaluate
evaluate: ## Evaluate NAME=<checkpoint> [SUITE=.. EPISODES=.. SCREENSHOTS=1]; the report goes beside the checkpoint
	bash scripts/evaluate.sh '$(NAME)' $(if $(SUITE),--suite '$(SUITE)') $(if $(EPISODES),--episodes '$(EPISODES)') \
	  $(if $(SCREENSHOTS),--screenshots)

.PHONY: docker-down
docker-down: docker-check ## Stop the stack (volumes, so checkpoints, are kept)
	$(COMPOSE) --profile tensorboard --profile view down

.PHONY: verify-gpu
verify-gpu: ## Check driver, CUDA, compute capability, GPU in containers and free disk
	bash scripts/verify_gpu.sh
