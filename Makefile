# vmm: the two set-up commands are `make run` (run a bundled guest) and `make test` (the suite).
# Everything they need is installed here: a virtualenv in .venv with the package, and the guests.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

# `make test` also runs the suite on the oldest Python vmm supports (3.11.0+): Debian 12's
# /usr/bin/python3 is 3.11.2. OLDEST_PYTHON= (empty) runs the default Python only; where the
# default path does not exist, that happens with a note.
OLDEST_PYTHON ?= /usr/bin/python3
OLD_VENV  := .venv-oldest
OLD_BIN   := $(OLD_VENV)/bin
# (named after the interpreter: another OLDEST_PYTHON makes a new virtualenv)
OLD_STAMP := $(OLD_VENV)/.installed-for$(subst /,_,$(OLDEST_PYTHON))
OLD_LOG   := build/test-oldest-python.log

# Quiet by default: `make V=1` shows every command of the guests' build.
ifeq ($(V),1)
  GUESTS_MAKE := $(MAKE) -C guests
else
  GUESTS_MAKE := $(MAKE) -s --no-print-directory -C guests
endif

.PHONY: all run test fuzz bench guests check-tools clean help

all: $(STAMP) guests

help:
	@echo "make run     record the bundled monitor guest with scripted keys, then replay the trace"
	@echo "make test    build guests, install into .venv (and .venv-oldest: OLDEST_PYTHON, default"
	@echo "             /usr/bin/python3), run the whole suite on both Pythons, with coverage of one"
	@echo "make fuzz    mutate recorded traces for ~5-10 min (FUZZ_EXAMPLES=$(FUZZ_EXAMPLES)): every one is"
	@echo "             refused (exit 14) or replayed, never a traceback; make test runs 40"
	@echo "make bench   benchmarks against baselines (a C KVM loop, python -c pass, QEMU); ~6 min"
	@echo "make guests  build the guest kernels into guests/build/"
	@echo "make clean   remove build products and the virtualenv"

# System packages the suite uses, as COMMAND:DEBIAN_PACKAGE; installed with apt-get as root,
# else named in a clear error. bwrap: the grader's build sandbox (docs/grading.md); chromium:
# the HTML report's tests; gdb: the debugger's tests (tests/test_gdb.py drives it for real);
# QEMU, and GRUB's BIOS image with grub-mkrescue, xorriso and mtools to boot multiboot2: the
# reference the pc kernels are compared with (tests/test_qemu_reference.py); xfonts-base: the
# X11 font the bundled text-screen font is made from (tests/test_screen.py regenerates it).
SYSTEM_PACKAGES := as:binutils ld:binutils objcopy:binutils gcc:gcc bwrap:bubblewrap \
                   chromium:chromium gdb:gdb qemu-system-i386:qemu-system-x86 \
                   grub-mkrescue:grub-common /usr/lib/grub/i386-pc/grub-bios-setup:grub-pc-bin \
                   xorriso:xorriso mformat:mtools \
                   /usr/share/fonts/X11/misc/8x13.pcf.gz:xfonts-base

check-tools:
	@scripts/need-packages $(SYSTEM_PACKAGES)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: Python 3.11 or newer is needed ($(PYTHON))"; exit 1; }

# A Python that can make a virtualenv: Debian and Ubuntu split `venv` and `ensurepip` into
# python3-venv, installed here when we may (root with apt-get), else named in the error.
define check_venv
	@$(1) -c 'import venv, ensurepip' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "$(1) cannot make a virtualenv: installing python3-venv with apt-get"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null || \
	      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null; }; \
	  fi; \
	  $(1) -c 'import venv, ensurepip' 2>/dev/null || { \
	    echo "error: $(1) has no venv/ensurepip module: install python3-venv (apt-get install python3-venv)"; exit 1; }; }
endef

$(STAMP): pyproject.toml | check-tools
	$(call check_venv,$(PYTHON))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

$(OLD_STAMP): pyproject.toml | check-tools
	@command -v $(OLDEST_PYTHON) >/dev/null || { echo "error: OLDEST_PYTHON=$(OLDEST_PYTHON) not found (OLDEST_PYTHON= runs the default Python only)"; exit 1; }
	@$(OLDEST_PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "error: OLDEST_PYTHON=$(OLDEST_PYTHON) is older than 3.11, the oldest vmm supports"; exit 1; }
	$(call check_venv,$(OLDEST_PYTHON))
	rm -rf $(OLD_VENV)
	$(OLDEST_PYTHON) -m venv $(OLD_VENV)
	$(OLD_BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

guests: check-tools
	@$(GUESTS_MAKE)

run: $(STAMP) guests
	mkdir -p build
	printf '1h' | $(BIN)/vmm record guests/build/monitor.bin -o build/monitor.trace --timeout 30s
	$(BIN)/vmm replay --quiet build/monitor.trace

# The suite on the default Python (its output here), under coverage in two pytest-xdist workers,
# and at the same time on the oldest supported one, without coverage (its output in $(OLD_LOG),
# summarised at the end). Coverage doubles the suite's CPU time, so it is measured once (vmm and
# harness have no code that runs on one Python version only); the oldest Python's run checks
# that the suite passes there. Three processes on a 2-core machine fill the time the suite
# spends waiting on guests' wall-clock limits and on terminals (measured one after another on one machine: 17.2 min with coverage on both and no
# workers, 16.6 with coverage on one, 13.2 this way). Coverage over vmm/ and harness/ is reported
# whatever the results; the status is non-zero if either run failed (pytest's 5, "no tests
# collected", included). PYTEST_ARGS="-n 0" runs the default Python's suite in one process.
ifeq ($(strip $(OLDEST_PYTHON)),)
  TEST_OLDEST :=
else ifeq ($(origin OLDEST_PYTHON)$(wildcard $(OLDEST_PYTHON)),file)
  TEST_OLDEST :=
  $(info note: $(OLDEST_PYTHON) does not exist: `make test` runs on $(PYTHON) only (set OLDEST_PYTHON=... to name the oldest Python))
else
  TEST_OLDEST := $(OLD_STAMP)
endif

test: $(STAMP) $(TEST_OLDEST) guests
	@rm -rf .coverage; mkdir -p build
	@status=0; old=; \
	if [ -n "$(TEST_OLDEST)" ]; then \
	  echo "make test: $$($(OLD_BIN)/python -V) runs alongside, its output in $(OLD_LOG)"; \
	  $(OLD_BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS) \
	    > $(OLD_LOG) 2>&1 & old=$$!; \
	fi; \
	echo "make test: $$($(BIN)/python -V)"; \
	$(BIN)/python -m coverage run -m pytest -n 2 $(PYTEST_ARGS) || status=$$?; \
	if [ -n "$$old" ]; then \
	  wait $$old; old_status=$$?; \
	  echo; echo "make test: $$($(OLD_BIN)/python -V), from $(OLD_LOG):"; \
	  if [ $$old_status = 0 ]; then tail -n 1 $(OLD_LOG); else cat $(OLD_LOG); fi; \
	fi; \
	$(BIN)/python -m coverage combine --quiet && $(BIN)/python -m coverage report || status=1; \
	echo; \
	echo "make test: $$($(BIN)/python -V): $$( [ $$status = 0 ] && echo passed || echo "FAILED (pytest status $$status)")"; \
	if [ -n "$$old" ]; then \
	  echo "make test: $$($(OLD_BIN)/python -V): $$( [ $$old_status = 0 ] && echo passed || echo "FAILED (pytest status $$old_status)")"; \
	  [ $$old_status = 0 ] || status=1; \
	fi; \
	exit $$status

# The trace-mutation test of `make test` (tests/test_trace_fuzz.py), with many more examples.
FUZZ_EXAMPLES ?= 50000
fuzz: $(STAMP) guests
	VMM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -p no:cacheprovider -q \
	  tests/test_trace_fuzz.py tests/test_trace_bounds.py $(PYTEST_ARGS)

# Not part of `make test`: minutes of timing on a quiet machine. Writes bench/results/latest.json.
bench: $(STAMP) guests
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	$(MAKE) -C guests clean
	rm -rf $(VENV) $(OLD_VENV) build .coverage .pytest_cache .hypothesis *.egg-info
