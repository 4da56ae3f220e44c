# pypod — every target installs what it needs, idempotently, on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEBS := crun runc conmon catatonit containernetworking-plugins docker-registry busybox-static \
        iptables iproute2 util-linux zstd skopeo umoci podman hyperfine
PYTEST_ARGS ?=

.PHONY: all deps system-deps python-deps cri-tools test unit functional demo bench clean

all: test

deps: system-deps python-deps

# apt-get runs only when a package is missing, so repeated runs cost a dpkg query.
system-deps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

python-deps: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,nomad,mesos,cri]' && $(PY) -m pip install -q --no-deps 'pymesos==0.3.15'
	$(PY) -m compileall -q core  # the CLI starts faster where PYTHONDONTWRITEBYTECODE is set
	touch $@

# crictl and critest (cri-tools v1.37.0) from the Go module proxy into .tools/bin, built once.
cri-tools:
	tests/cri/build_tools.sh .tools

test: deps cri-tools
	$(PY) -m pytest $(PYTEST_ARGS)

unit: python-deps
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

demo: deps
	bash examples/demo.sh

bench: deps
	$(PY) bench/unpack.py
	$(PY) bench/pull.py
	$(PY) bench/pods.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
