# The README's commands: `make demo`, `make test` and `make serve`. They install into .venv first when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo spread serve clean-demo

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

# pytest exits 5 when it collects no test; make treats that as a failure, as it should.
test: install
	$(PY) -m pytest tests

demo: install
	$(PY) tools/run_demo.py --out demo_output

# The demo over seeds 0-2 and the CPU code paths this machine has (about 12 minutes a run): each metric's mean, min
# and max per model, in work_dirs/demo_spread/spread.md (docs/experiments.md, "Evidence that holds").
spread: install
	$(PY) tools/demo_spread.py --root work_dirs/demo_spread

# The model `make demo` trained, behind an OpenAI-compatible API and a page with the city map: http://127.0.0.1:8000/
serve: install
	$(PY) tools/serve.py --demo

# `make demo` keeps finished steps; this removes all of them (city, models, training runs, answers, report), and
# nothing else: the demo trains under work_dirs/demo_helsinki, apart from the real runs' work_dirs/llava_phi3_mini.
clean-demo:
	rm -rf demo_output data/helsinki work_dirs/demo_helsinki
