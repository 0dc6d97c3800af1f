"""The provisioning tests' policy: each newcomer gets the packages its test needs, by hostname."""

PACKAGES = {
    "build2": ["hive-e2e-lib", "hive.e2e.tool"],  # no such package; as an apt regex: hive-e2e-tool
    "build3": ["hive-e2e-slow"],                   # its postinst takes 8 s: the agent restarts in it
    "build4": ["hive-e2e-lib"],                    # installed after repairing an interrupted dpkg
    "build5": ["hive-e2e-breaker"],                # conflicts with jq: installing would remove jq
}


def suggest_role(view, newcomer):
    return {"role": "e2e-prov", "packages": PACKAGES.get(newcomer["hostname"], []), "config": {},
            "reason": "the provisioning tests' policy"}
