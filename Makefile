# The README's two commands: `make demo` and `make test`. Both install into .venv first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo clean-demo

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# DS_BUILD_OPS=0: build DeepSpeed without compiling its CUDA ops (they are JIT-built on GPU machines).
	DS_BUILD_OPS=0 $(PY) -m pip install -r requirements.txt
	# XTuner and bitsandbytes go in with --no-deps: see requirements-nodeps.txt for why.
	$(PY) -m pip install --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collects no test; make treats that as a failure, as it should.
test: install
	$(PY) -m pytest tests

demo: install
	$(PY) tools/run_demo.py --out demo_output

# `make demo` keeps finished steps; this removes all of them (city, models, training runs, answers, report), and
# nothing else: the demo trains under work_dirs/demo_helsinki, apart from the real runs' work_dirs/llava_phi3_mini.
clean-demo:
	rm -rf demo_output data/helsinki work_dirs/demo_helsinki
