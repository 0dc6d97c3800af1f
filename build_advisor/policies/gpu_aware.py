"""Example policy: a node that reports a GPU becomes an ml-trainer; others get the default.

Use it with `policy = "/opt/build-agent/build_advisor/policies/gpu_aware.py"` in hive.toml.
"""

from build_advisor.policy import default_suggest_role


def suggest_role(view, newcomer):
    capabilities = newcomer.get("capabilities") or {}
    if capabilities.get("has_gpu"):
        trainers = sum(1 for member in view["members"] if member["role"] == "ml-trainer")
        return {"role": "ml-trainer", "packages": ["nvidia-cuda-toolkit", "python3-pip"],
                "config": {"gpus": 1},
                "reason": f"node has a GPU; hive has {trainers} ml-trainer(s)"}
    return default_suggest_role(view, newcomer)
