"""Example policy: keep a minimum number of builders, then balance builders and runners.

Use it with `policy = "/opt/build-agent/build_advisor/policies/role_balance.py"` in hive.toml.
Edit MIN_BUILDERS to taste.
"""

from collections import Counter

MIN_BUILDERS = 3

BUILDER_PACKAGES = ["openjdk-17-jdk", "maven", "git", "build-essential"]
RUNNER_PACKAGES = ["python3-pytest", "nodejs", "npm"]


def suggest_role(view, newcomer):
    roles = Counter(member["role"] for member in view["members"])
    if roles["controller"] == 0:
        return {"role": "controller", "packages": ["ansible", "git"], "config": {},
                "reason": "the hive has no controller"}
    builders, runners = roles["builder"], roles["runner"]
    if builders < MIN_BUILDERS:
        return {"role": "builder", "packages": BUILDER_PACKAGES, "config": {},
                "reason": f"only {builders} builder(s), want at least {MIN_BUILDERS}"}
    if runners < builders:
        return {"role": "runner", "packages": RUNNER_PACKAGES, "config": {},
                "reason": f"{builders} builders but {runners} runner(s)"}
    return {"role": "builder", "packages": BUILDER_PACKAGES, "config": {},
            "reason": f"{builders} builders and {runners} runners: add build capacity"}
