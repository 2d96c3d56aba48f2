# ftw: fine-tune with LLaMA-Factory, convert with llama.cpp, serve with Ollama.
# The two commands to start with:  make demo   and   make test

RECIPE  ?= demo
PROFILE ?= cpu
RUN     ?= $(RECIPE)
DATA    ?=
QUANT   ?= Q4_K_M
SET     ?=
# `make synth`: the documents (default: the recipe's synth.docs) and the teacher model that reads them
DOCS    ?=
TEACHER ?=
TEACHER_MODEL ?=
PARALLEL ?= 1
# FORCE=1: train even where the planner (or the GPU's free memory) says it won't fit
# RETRAIN=1: `make train` starts the run over instead of resuming it
# KEEP_INTERMEDIATES=1: `make gguf` keeps the merged weights and the f16 GGUF (ftw eval needs them)
KEEP_INTERMEDIATES ?=
# IMATRIX=1: `make gguf` quantizes with an importance matrix from the run's training rows (builds llama.cpp's tools)
IMATRIX ?=
# `make adapter`: the base the LoRA adapter is served on (a .gguf or an Ollama name; default: ftw makes one)
BASE    ?=
# `make publish`: the Hugging Face repository (USER/NAME); DRY_RUN=1 builds and lists the folder only
REPO    ?=
DRY_RUN ?=

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
FTW     := $(VENV)/bin/ftw
DEPS_STAMP := $(VENV)/.ftw-deps

.PHONY: setup tools demo data synth train gguf adapter publish ollama chat lmstudio eval lint test test-fast clean-runs

# Pinned packages into .venv (re-installed only when requirements change; llama-cpp-python compiles
# without the CPU kernels that crash on this CPU, then must generate a token), then the llama.cpp tree
# and the demo's offline base model (both skip themselves when present).
setup: $(DEPS_STAMP)
	@$(PY) -m wrapper.setup.llama_cpp
	@TQDM_DISABLE=1 $(PY) -m wrapper.setup.demo_model

$(DEPS_STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	flags="$$($(PY) -m wrapper.core.cpu)"; CFLAGS="$$CFLAGS $$flags" CXXFLAGS="$$CXXFLAGS $$flags" \
		$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m wrapper.setup.llama_cpp_python
	touch $@

# llama.cpp's own programs (llama-quantize, -imatrix, -perplexity, -server) from vendor/llama.cpp, built
# once per llama.cpp commit into vendor/llama.cpp/build; ftw also builds them on first use. FORCE=1 rebuilds.
tools: setup
	@$(PY) -m wrapper.setup.tools $(if $(FORCE),--force)

# Check, clean, split and count DATA for the run (optional; `make train` then uses it).
data: setup
	$(FTW) data prepare --recipe $(RECIPE) --run $(RUN) $(foreach f,$(DATA),--data $(f))

# Documents -> grounded question-answer rows from a teacher model (runs/RUN/synth), then the
# run's prepared data. Re-running resumes. E.g. with Ollama serving qwen3:8b:
#   make synth RECIPE=demo-docs RUN=docs TEACHER=http://127.0.0.1:11434/v1 TEACHER_MODEL=qwen3:8b
synth: setup
	$(if $(TEACHER),,$(error TEACHER= is needed: an endpoint URL (with TEACHER_MODEL=), a .gguf file, run:NAME or ollama:NAME:TAG))
	$(FTW) data synth --recipe $(RECIPE) --run $(RUN) --teacher $(TEACHER) $(if $(TEACHER_MODEL),--teacher-model $(TEACHER_MODEL)) $(foreach d,$(DOCS),--docs $(d)) --parallel $(PARALLEL) $(foreach s,$(SET),--set $(s))
	$(FTW) data prepare --recipe $(RECIPE) --run $(RUN) $(foreach s,$(SET),--set $(s))

train: setup
	$(FTW) render --recipe $(RECIPE) --profile $(PROFILE) --run $(RUN) $(foreach f,$(DATA),--data $(f)) $(foreach s,$(SET),--set $(s)) $(if $(FORCE),--ignore-fit)
	$(FTW) train --run $(RUN) $(if $(RETRAIN),--force) $(if $(FORCE),--ignore-fit)

gguf: setup
	$(FTW) export --run $(RUN)
	$(FTW) gguf --run $(RUN) $(foreach q,$(QUANT),--quant $(q)) $(if $(KEEP_INTERMEDIATES),--keep-intermediates) $(if $(IMATRIX),--imatrix)
	$(FTW) modelfile --run $(RUN) --quant $(firstword $(QUANT))
	$(FTW) smoke --run $(RUN) --quant $(firstword $(QUANT))

# The LoRA alone as a GGUF adapter (megabytes) and Modelfile.adapter on its base.
adapter: setup
	$(FTW) adapter --run $(RUN) $(if $(BASE),--base "$(BASE)") --quant $(firstword $(QUANT))

# The quantized GGUF(s), Ollama's Hub files and a model card to a Hugging Face repository.
publish: setup
	$(FTW) publish --run $(RUN) --repo "$(REPO)" $(foreach q,$(QUANT),--quant $(q)) $(if $(DRY_RUN),--dry-run)

ollama: setup
	$(FTW) ollama --run $(RUN)

# Talk to the run's GGUF in the terminal (training format), or hand it to LM Studio.
chat: setup
	$(FTW) chat --run $(RUN) --quant $(firstword $(QUANT))

lmstudio: setup
	$(FTW) lmstudio --run $(RUN) --quant $(firstword $(QUANT))

# The whole path on CPU with the embedded default: SmolLM2-135M + a small ru/en dataset whose rows
# carry `fact`: prepare, train, merge, GGUF, Modelfile, smoke, answers, eval (the steps are
# wrapper/commands/setup.py's DEMO_STEPS, so that `ftw demo` runs the same ones without make).
demo: setup
	$(FTW) demo

# Base vs merged vs Q4_K_M on the recipe's control prompts, validation rows and general
# knowledge; writes runs/RUN/eval.json, report.md and report.html. Re-running resumes.
eval: setup
	$(FTW) eval --run $(RUN)

# Style (ruff), formatting (ruff format), the import layers of ARCHITECTURE.md (import-linter) and
# the types of the layers every stage hands its results through (mypy over core/ and config/).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m mypy

# Everything, with real LLaMA-Factory runs and real llama.cpp files: what CI runs. Plain `pytest`
# runs only the fast tier (pyproject.toml's addopts); -m below selects every test. Two pytest
# processes: a test spends much of its time in one-threaded work (starting Python children,
# converting, reading files back), so the second core is idle otherwise. Each process keeps to its
# share of the cores, a module runs in one process, the longest modules first (tests/conftest.py).
TEST_WORKERS ?= 2
test: lint tools
	$(PY) -m pytest -q -m "slow or not slow" --durations=40 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The inner loop: unit and in-process CLI tests, no training or conversion (under 2 minutes).
test-fast: lint
	$(PY) -m pytest -q -m "not slow" tests

clean-runs:
	rm -rf runs
