"""Lab test policy: a slow or unruly user policy.

build3: takes 30 s (as a policy that queries a hung service would); build5: answers with a set in
its config (not JSON); build6: answers with NaN (JSON that every receiver refuses).  Every other
newcomer gets the default table's answer at once, with "policy: " before its reason, so a test
can tell the policy's own answer from the advisor's fallback to the default.
"""

import math
import time

from build_advisor.policy import default_suggest_role


def suggest_role(view, newcomer):
    name = newcomer["hostname"]
    if name == "build3":
        time.sleep(30)
    answer = default_suggest_role(view, newcomer)
    if name == "build5":
        answer["config"] = {"tags": {"gpu", "big"}}
    elif name == "build6":
        answer["config"] = {"ratio": math.nan}
    else:
        answer["reason"] = "policy: " + answer["reason"]
    return answer
