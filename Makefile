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

clean:
	rm -rf dist build/work
