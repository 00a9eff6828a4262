# The two commands of the README: `make run` (install, then serve the embedded default) and
# `make test` (install, then run the tests). Everything lands in .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU wheel of torch for this machine and CI; users with GPUs install their own build first.
TORCH_PIN ?= torch==2.13.0

.PHONY: install install-test run test proto bench clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e .[triton]
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e .[test]
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/duet serve

test: install-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Regenerate the gRPC stubs from proto/pipeline.proto (tests/test_proto.py fails when stale).
proto: install-test
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. proto/pipeline.proto

clean:
	rm -rf $(VENV) build *.egg-info
