"""Where leases live: the store protocols and the file, memory and etcd stores."""
