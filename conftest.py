# Tests marked kernel(...) run in a VM when this kernel lacks the features (tests/vm).
pytest_plugins = ["tests.vm.plugin"]
