# Model Manager: `make run` starts the service, `make test` runs the whole suite.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed

.PHONY: run run-sim test deps clean

$(DEPS): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

deps: $(DEPS)

run: $(DEPS)
	$(BIN)/python main.py

run-sim: $(DEPS)
	$(BIN)/python main.py --backend sim

# pytest exits 5 when it collects no tests: not a failure of the suite.
test: $(DEPS)
	$(BIN)/python -m pytest; status=$$?; if [ $$status -eq 5 ]; then exit 0; else exit $$status; fi

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis
