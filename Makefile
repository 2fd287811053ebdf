# The two commands a new machine needs: `make run` and `make test`. Everything else is optional.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help install system-deps run test lint smoke bench soak bench-full docker-test arm64 compile-hef clean

help:
	@echo "make run    - local broker + worker (cpu model) + HTTP bridge + simulated sensors"
	@echo "make test   - the whole test suite against real Mosquitto and real processes"
	@echo "make lint   - ruff and mypy"
	@echo "make smoke  - the seed's smoke tests against a running stack (BRIDGE_URL, MQTT_PORT)"
	@echo "make bench  - benchmarks, short (see bench/README.md); bench-full records a run"
	@echo "make soak   - long reliability run (SOAK_SECONDS, default 600)"
	@echo "make docker-test - hadolint, compose config, the images and the stack in containers"
	@echo "make arm64  - the runtime image for linux/arm64 under QEMU, checked"
	@echo "make compile-hef ARGS=... - ONNX + calibration set -> artifacts/*.hef (Hailo DFC)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	touch $@

install: $(VENV)/.installed

system-deps:
	@scripts/install_system_deps.sh

run: install system-deps
	BIN=$(BIN) scripts/run_local.sh

test: install system-deps
	$(BIN)/python -m pytest -q -m "not soak"

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

smoke:
	scripts/smoke.sh

bench: install system-deps
	$(BIN)/python bench/bench_pipeline.py --quick
	$(BIN)/python bench/bench_overload.py
	$(BIN)/python bench/bench_worker_cost.py
	$(BIN)/python bench/bench_cpu.py
	$(BIN)/python bench/bench_bridge.py
	$(BIN)/python bench/bench_page.py

bench-full: install system-deps
	$(BIN)/python bench/bench_pipeline.py --record

soak: install system-deps
	$(BIN)/python -m pytest -q -m soak -s

docker-test: install
	scripts/docker_ci.sh

arm64: install
	scripts/build_arm64.sh

compile-hef:
	scripts/compile_hef.sh $(ARGS)

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
