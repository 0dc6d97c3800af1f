"""hive-bench internals: the lab driver, a Serf RPC client and the measurements."""
