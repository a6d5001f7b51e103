# Every target runs in .venv, the checkout's own virtual environment (build/deps.sh makes it).
PYTHON ?= $(CURDIR)/.venv/bin/python
PREFIX ?= /opt/cni/bin
# where `underlay`, the operator's command, goes (on PATH; empty: nowhere)
BIN_DIR ?= /usr/local/bin

PLUGIN_PREFIX ?=
FORCE ?= 0

TIERS = test-unit test-exec test-ns test-vm test-clients test-cluster test-build test-hostile test-reliability

.PHONY: deps test $(TIERS) soak demo build install uninstall bench image-context clean distclean

deps:
	build/deps.sh

# The README's first command: build the executables, attach two pods with them.
demo: deps build
	PYTHON=$(PYTHON) build/demo.sh dist/bin

# The README's test command (what CI runs): every tier, on two workers.
test: deps build
	$(PYTHON) -m pytest -n 2

# One tier alone: its directory under tests/ (README "Tests"); PYTEST_ARGS="-n 1 -x"
# etc. are passed on. The tiers that run the built executables depend on `build`
# (the tests never build them)...
$(filter-out test-unit test-hostile test-vm,$(TIERS)): test-%: build
	$(PYTHON) -m pytest tests/$* $(PYTEST_ARGS)

# ...the others do not.
test-unit test-hostile: test-%: deps
	$(PYTHON) -m pytest tests/$* $(PYTEST_ARGS)

# tests/vm and every kernel(...) test of every tier (in the VM when this kernel lacks a feature)
test-vm: build
	$(PYTHON) -m pytest -m "(vm or kernel) and not fuzz" $(PYTEST_ARGS)

# The reliability scenarios at full size (README "Guarantees"); needs root.
soak: deps
	$(PYTHON) -m tests.reliability.soak

# One PyInstaller onedir bundle in dist/bin/.underlay, plugin names as symlinks;
# skipped while dist/bin is the build of these sources (build/source_stamp.py).
build: deps
	@$(PYTHON) build/source_stamp.py --check || PYTHON=$(PYTHON) build/build.sh

# Installs dist/bin into $(DESTDIR)$(PREFIX) (default /opt/cni/bin) and the
# `underlay` command into $(DESTDIR)$(BIN_DIR); never replaces a file it did
# not install unless FORCE=1 (and `underlay` never). PLUGIN_PREFIX=underlay-
# installs underlay-macvlan etc. next to the reference plugins.
install:
	build/install.sh --from dist/bin --destdir "$(DESTDIR)" --prefix "$(PREFIX)" \
		--plugin-prefix "$(PLUGIN_PREFIX)" --bin-dir "$(BIN_DIR)" $(if $(filter 1 yes true,$(FORCE)),--force)

uninstall:
	build/install.sh --destdir "$(DESTDIR)" --prefix "$(PREFIX)" --uninstall

# Side-by-side figures against Debian's Go plugins (root for the macvlan
# section); prints, asserts nothing. BENCH_ARGS=--sections version,leases
bench: deps
	$(PYTHON) tests/bench/bench.py $(BENCH_ARGS)

# The installer image's build context (conf/image) from dist/bin.
image-context:
	conf/image/context.sh build/work/image-context

clean:
	rm -rf dist build/work

distclean: clean
	rm -rf .venv
