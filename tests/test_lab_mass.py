"""Integration: mass joins across real namespaces.  Many joiners started at once into a live hive
are advised in batched rounds (one IDENTIFY for a whole queue of joiners) and end with exactly
the roles one-after-another joins give."""

from __future__ import annotations

import collections
import shutil
import subprocess
import time
from pathlib import Path

from build_advisor.policy import load_policy
from lab import REPO, log_lines

ROLE_BALANCE = REPO / "build_advisor" / "policies" / "role_balance.py"
DATA = REPO / "tests" / "data"


def sequential_counts_by(policy, total: int) -> dict[str, int]:
    """The role counts of ``total`` nodes joining one after another, advised by ``policy`` (the
    first one founds the hive): every newcomer is advised from the view of those before it."""
    members = [{"node_id": "n1", "hostname": "build1", "ip": "10.0.0.1", "role": "founder",
                "capabilities": {}}]
    for n in range(2, total + 1):
        view = {"self": members[0], "peers": members[1:], "members": list(members)}
        newcomer = {"node_id": f"n{n}", "hostname": f"build{n}", "ip": f"10.0.0.{n}",
                    "capabilities": {}}
        members.append({**newcomer, "role": policy(view, newcomer)["role"]})
    return dict(collections.Counter(m["role"] for m in members))


def test_simultaneous_joiners_are_advised_in_batched_rounds_with_the_sequential_roles(
        make_lab, tmp_path):
    # role_balance: each newcomer's role depends on the roles of those before it (a controller,
    # 3 builders, then runners and builders in turn), and a user's policy runs in the advisor's
    # worker thread: the batch's threaded path, with its one deadline.
    policy_file = tmp_path / ROLE_BALANCE.name
    shutil.copyfile(ROLE_BALANCE, policy_file)
    policy_file.chmod(0o644)
    lab = make_lab(policy=str(policy_file))
    lab.up(5)
    holder = lab.add(1)[0]  # runs no daemon: a joiner holding the queue (tests/data)
    new = lab.add(25)
    # hive-lab starts hosts one after another (seconds for 25 on a busy machine): a joiner that
    # says it is asking holds them all in the queue until every one has started, as if they had
    # started at the same moment.
    release = tmp_path / "release"
    holding = subprocess.Popen(
        ["ip", "netns", "exec", f"{lab.name}-h{holder}", lab.env["HIVE_LAB_PYTHON"],
         str(DATA / "queue_holder.py"), str(lab.host_dir(holder) / "shared_secret"),
         f"{lab.subnet}.255", f"build{holder}", lab.ip(holder), str(release)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lab.start(*new)
        lab.wait_for(lambda: all("Waiting" in lab.log(i) for i in new), 120,
                     "every joiner to wait in the queue")
        released = time.time()
        release.touch()
        lab.wait(*new, timeout=60)
    finally:
        holding.kill()
        holding.wait()
    took = max(Path(lab.host_dir(i) / "state" / "identity.json").stat().st_mtime
               for i in new) - released

    counts = collections.Counter(lab.roles(list(range(1, 6)) + new).values())
    expected = sequential_counts_by(load_policy(str(policy_file)), 30)
    assert counts == expected, lab.roles()
    # (Split votes are printed, not asserted: an advisor whose agent lags on this shared 2-core
    # machine answers from the view it has after VIEW_SYNC_TIMEOUT, batched or not.)
    split = {i: lab.identity(i)["votes"] for i in new if len(lab.identity(i)["votes"]) > 1}

    # The mechanism: the queue was advised in a round (or very few) that covered the joiners,
    # not in one round (an IDENTIFY of its own) per joiner, one after another.
    own_rounds = sum(log_lines(lab.log(i)).count("Asking peers for role assignment...")
                     for i in new)
    followed = sum(any(line.startswith("Asking peers for role assignment in the round of")
                       for line in log_lines(lab.log(i))) for i in new)
    print(f"\n25 joiners queued at once in a hive of 5 (role_balance): all identified "
          f"{took:.2f} s after the queue was released; {own_rounds} round(s) of their own, "
          f"{followed} joiner(s) advised in another's round; roles "
          f"{dict(sorted(counts.items()))}; split votes {split}")
    assert own_rounds <= 3 and followed >= 20, (own_rounds, followed)
