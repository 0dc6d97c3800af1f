"""A broken policy for tests: it raises for every newcomer whose hostname ends in an odd digit."""


def suggest_role(view, newcomer):
    if int(newcomer["hostname"][-1]) % 2:
        raise RuntimeError("policy bug")
    return {"role": "tester", "packages": ["git"], "config": {"slots": 2}, "reason": "even host"}
