"""The role hooks tests' policy: every newcomer becomes a builder with one stand-in package."""


def suggest_role(view, newcomer):
    return {"role": "builder", "packages": ["hive-e2e-tool"], "config": {},
            "reason": "the hooks test wants a builder"}
