# Tests marked kernel(...) run in a VM when this kernel lacks the features (tests/vm);
# tests.etcd provides the etcd_cluster fixture (real etcd members) to every test directory.
pytest_plugins = ["tests.vm.plugin", "tests.etcd"]
