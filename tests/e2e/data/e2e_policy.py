"""A test policy for the e2e tests: every newcomer becomes an 'e2e-worker' whose packages are the
stand-in packages the lab's apt repository serves."""


def suggest_role(view, newcomer):
    workers = sum(1 for member in view["members"] if member.get("role") == "e2e-worker")
    return {"role": "e2e-worker", "packages": ["hive-e2e-tool", "hive-e2e-lib"],
            "config": {"slots": 2, "workers_before": workers},
            "reason": "the e2e policy wants workers"}
