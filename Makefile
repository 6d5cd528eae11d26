# The two commands: `make run` and `make test` (see README.md).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
HOST   ?= 127.0.0.1
PORT   ?= 7860

.PHONY: run test install install-dev system-deps migrate bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first: the CPU build 2.13.0 is served here; a GPU machine keeps the torch it has.
$(VENV)/.torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	touch $@

$(STAMP): pyproject.toml $(VENV)/.torch
	$(PIP) install -e .
	touch $@

$(DEV_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -e ".[dev]"
	touch $@

install: $(STAMP)
install-dev: $(DEV_STAMP)

migrate: $(STAMP)
	$(VENV)/bin/alembic upgrade head

run: migrate
	$(VENV)/bin/sam3-studio --host $(HOST) --port $(PORT)

# Redis and Chromium come from the system package manager; the tests start their own
# redis-server on a free port when none answers (tests/services.py).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing:$$missing. Install them, e.g. 'sudo apt-get install$$missing', then run make test again." >&2; exit 1; \
	  fi; \
	fi

test: $(DEV_STAMP) system-deps
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS)

bench: $(DEV_STAMP)
	for b in bench/*_bench.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
