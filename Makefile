# vmm: the two set-up commands are `make run` (run a bundled guest) and `make test` (the suite).
# Everything they need is installed here: a virtualenv in .venv with the package, and the guests.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: all run test bench guests check-tools check-test-tools clean help

all: $(STAMP) guests

help:
	@echo "make run     record the bundled monitor guest with scripted keys, then replay the trace"
	@echo "make test    build guests, install into .venv, run the whole suite with coverage"
	@echo "make bench   benchmarks against baselines (a C KVM loop, python -c pass, QEMU); ~3 min"
	@echo "make guests  build the guest kernels into guests/build/"
	@echo "make clean   remove build products and the virtualenv"

check-tools:
	@for tool in as ld gcc objcopy; do \
	  command -v $$tool >/dev/null || { echo "error: '$$tool' not found: install binutils and gcc (apt-get install binutils gcc)"; exit 1; }; \
	done
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11 or newer is needed ($(PYTHON))"; exit 1; }

# System packages the suite drives for real (COMMAND:DEBIAN_PACKAGE): gdb for tests/test_gdb.py.
TEST_SYSTEM_PACKAGES := gdb:gdb

check-test-tools:
	@for pair in $(TEST_SYSTEM_PACKAGES); do \
	  cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  command -v $$cmd >/dev/null || { echo "error: '$$cmd' not found: install it (apt-get install $$pkg); the tests drive it for real"; exit 1; }; \
	done

$(STAMP): pyproject.toml | check-tools
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

guests: check-tools
	$(MAKE) -C guests

run: $(STAMP) guests
	mkdir -p build
	printf '1h' | $(BIN)/vmm record guests/build/monitor.bin -o build/monitor.trace --timeout 30s
	$(BIN)/vmm replay --quiet build/monitor.trace

test: $(STAMP) guests check-test-tools
	rm -rf .coverage
	$(BIN)/python -m coverage run -m pytest $(PYTEST_ARGS)
	$(BIN)/python -m coverage combine --quiet
	$(BIN)/python -m coverage report

# Not part of `make test`: minutes of timing on a quiet machine. Writes bench/results/latest.json.
bench: $(STAMP) guests
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	$(MAKE) -C guests clean
	rm -rf $(VENV) build .coverage .pytest_cache .hypothesis *.egg-info
