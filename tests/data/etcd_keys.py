"""List the keys under a prefix in etcd, with the hive's own client (build_agent.etcd).

Usage (inside a lab host): python3 etcd_keys.py URL PREFIX
Prints one JSON object: {"revision": N, "keys": {key: value, ...}}.
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from build_agent.etcd import HttpClient  # noqa: E402

url, prefix = sys.argv[1], sys.argv[2]
revision, kvs = HttpClient([url], timeout=2.0).range_prefix(prefix)
print(json.dumps({"revision": revision, "keys": {k: v for k, v, _ in kvs}}, sort_keys=True))
