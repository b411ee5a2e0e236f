# Every target here is what CI runs (.ci/run calls `make deps-test`, `make lint` and
# `make test`). `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the deploy scripts run the programs from this virtualenv
export VENV_BIN := $(abspath $(BIN))

# Make passes the environment through: the scripts and programs take their defaults from
# common/config.py (docs/configuration.md). Only what a recipe here expands has one:
WEB_PORT ?= 8000
#: locust load for `make loadtest` (the seed guide's batch test: USERS=20 SPAWN_RATE=5)
USERS ?= 10
SPAWN_RATE ?= 2
RUN_TIME ?= 60s

.PHONY: help install deps-test deps-up up up-batch down reload example logs status test test-unit bench bench-gpu loadtest compare \
	compare-peers bench-accelerator tune chaos lint \
	clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install the project with its dev extras

$(STAMP): setup.cfg pyproject.toml $(PIP_CONSTRAINTS)
	@test -x $(BIN)/python || { echo "==> $(PYTHON) -m venv $(VENV)"; $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install $(if $(PIP_CONSTRAINTS),-c $(PIP_CONSTRAINTS)) -e '.[dev]'
	@touch $@

# System programs (deploy/system_deps.sh): installed with apt-get when missing and
# running as root; otherwise make stops at once and prints the command to run.
deps-test: ## what make test needs: chromium, nginx, redis-server unless a Redis answers, RabbitMQ running
	deploy/system_deps.sh test

deps-up: ## the system programs a local stack needs: nginx, and redis-server without a Redis
	deploy/system_deps.sh up

up: deps-up install ## start the stack detached (individual mode unless USE_BATCH_PROCESSING=true); waits for /readyz
	deploy/up.sh

up-batch: deps-up install ## the same with USE_BATCH_PROCESSING=true
	USE_BATCH_PROCESSING=true deploy/up.sh

down: install ## stop everything `make up` started
	deploy/down.sh

reload: install ## restart MODEL=<name>'s workers one at a time, a spare first: nothing accepted is lost
	deploy/reload.sh "$(MODEL)"

example: install ## train a 7-class classifier on the bundled photos into models/photos (make up serves it)
	$(BIN)/python -m workers.example

logs: install ## last TAIL=50 lines of each service's log (FOLLOW=1 to follow)
	deploy/logs.sh

status: install ## service states and one GET /readyz
	deploy/status.sh

test: deps-test install ## the whole suite, Redis and RabbitMQ (a private redis-server when none answers)
	deploy/with_redis.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install ## unit tests only: no services needed
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

bench: install ## model-only forward-pass time per batch size (default model, resnet50) into docs/benchmarks.md
	$(BIN)/python -m loadtest.model_benchmark --markdown docs/benchmarks.md --threads 1
	$(BIN)/python -m loadtest.model_benchmark --markdown docs/benchmarks.md --threads 2 --section model-benchmark-efficientnet_lite0-2-threads
	$(BIN)/python -m loadtest.model_benchmark --markdown docs/benchmarks.md --model resnet50 --weights random

bench-gpu: install ## model-only ResNet-50 on a CUDA GPU (fp32/fp16, channels-last, batch 1..256) into docs/benchmarks-gpu.md; exits 2 without CUDA
	$(BIN)/python -m loadtest.model_benchmark --gpu-variants fp32,fp32-cl,fp16,fp16-cl --model resnet50 --weights random \
		--sizes 1,2,4,8,16,32,64,128,256 --warmup 5 --markdown docs/benchmarks-gpu.md

loadtest: install ## locust against the running stack (make up first)
	@$(BIN)/python -m deploy.wait_ready http://127.0.0.1:$(WEB_PORT)/readyz --timeout 0 >/dev/null \
		|| { echo "error: nothing ready at http://127.0.0.1:$(WEB_PORT)/readyz: start the stack with make up" >&2; exit 1; }
	cd loadtest && ../$(BIN)/locust -f locustfile.py --host=http://localhost:$(WEB_PORT) \
		--users $(USERS) --spawn-rate $(SPAWN_RATE) --run-time $(RUN_TIME) --headless

compare: install ## batched vs unbatched throughput, each variant started by the driver
	$(BIN)/python -m loadtest.compare

compare-peers: install ## this project (both modes) vs LitServe vs plain Flask+Celery, same model and load, into docs/benchmarks.md
	$(BIN)/python -m loadtest.peers

bench-accelerator: install ## individual vs batch (both policies) and 1/2/4 workers on a simulated accelerator (MODEL=simulated) into docs/benchmarks.md
	$(BIN)/python -m loadtest.accelerator

tune: install ## search BATCH_SIZE / BATCH_TIMEOUT
	$(BIN)/python -m loadtest.tune

chaos: deps-up install ## fault and overload scenarios against a real stack into docs/reliability.md (~6-7 min)
	$(BIN)/python -m loadtest.chaos

lint: install ## ruff (settings in pyproject.toml) and mypy (settings and the checked paths in setup.cfg)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean: ## remove caches and build files (not .venv, not a running stack's run/)
	@if [ -f run/supervisord.pid ] && kill -0 "$$(cat run/supervisord.pid)" 2>/dev/null; then \
		echo "error: the stack is running: make down first" >&2; exit 1; fi
	rm -rf run build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## clean, and remove .venv too
	rm -rf $(VENV)
