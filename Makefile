# fieldnode: `make demo` and `make test` install everything first (idempotent `make setup`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
MPYLIB := build/mpylib
ARGS   ?=

.PHONY: setup demo test unit hil clean debian-packages

setup: $(VENV)/.installed $(MPYLIB)/.fetched debian-packages

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# MicroPython libraries are fetched by name and checked against pinned hashes (tools/mpy_deps.py).
$(MPYLIB)/.fetched: tools/mpy_deps.py $(VENV)/.installed
	$(BIN)/python tools/mpy_deps.py --dest $(MPYLIB)
	touch $@

debian-packages:
	@command -v mosquitto >/dev/null && command -v mosquitto_pub >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; }

demo: setup
	$(BIN)/fieldnode demo $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

unit: setup
	$(BIN)/python -m pytest tests/unit tests/firmware $(ARGS)

hil: setup
	$(BIN)/python -m pytest tests/hil $(ARGS)

clean:
	rm -rf build $(VENV) .pytest_cache
