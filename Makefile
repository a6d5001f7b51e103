PYTHON ?= python3
PREFIX ?= /opt/cni/bin

.PHONY: deps test unit demo build install clean

deps:
	build/deps.sh

# The README's test command.
test: deps
	$(PYTHON) -m pytest -n 2

unit:
	$(PYTHON) -m pytest tests/unit

# One PyInstaller onedir bundle in dist/bin/.underlay, plugin names as symlinks.
build:
	PYTHON=$(PYTHON) build/build.sh

clean:
	rm -rf dist build/work
