"""Measure a mass join by hand (not a test): N joiners started together into a live hive of B.

    sudo python3 tests/data/mass_join.py B N [--hold | --frozen] [--policy FILE] [--keep-logs DIR]

Builds a hive-lab lab 'mj' on 10.77.249.0/24 (B hosts joined one after another, N more), starts
the joiners' advisors first, then the N agents back to back (as scripts/hive-bench does), and
prints: how long the spawning took; the last identity.json after the first agent's start and
after the last agent was up ('Looking for hive peers' in its log); the role counts; split votes;
rounds of their own vs joiners advised in another's round.  --hold: a queue holder
(tests/data/queue_holder.py) holds every joiner in the queue until all N are up, then lets them
go: the time is then from that release (the protocol's share, without interpreter start-up),
and the daemons' CPU while the N joiners wait is printed.  --frozen: each agent stops itself
once started (scripts/hivebench/frozen.py, as the bench's mass phase does) and all are let go at
one moment: the time is from then; it prints the CPU used, and the hive's own agents' time on a
CPU and waiting for one.  Bounded (120 s per wait); the lab is
removed at the end, on error and on Ctrl-C.
"""

import collections
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from lab import Lab  # noqa: E402


def main() -> None:
    args = sys.argv[1:]
    hold = "--hold" in args
    frozen = "--frozen" in args
    policy = args[args.index("--policy") + 1] if "--policy" in args else ""
    base, joiners = int(args[0]), int(args[1])
    lab = Lab("mj", "10.77.249", policy=policy)
    lab.down(check=False)
    procs: list[subprocess.Popen] = []

    def spawn(i: int, module: str, name: str, argv: list[str] | None = None,
              freeze: bool = False) -> None:
        d = lab.host_dir(i)
        run = ([str(REPO / "scripts/hivebench/frozen.py"), module] if freeze else ["-m", module])
        argv = argv or ["unshare", "--uts", "--", "sh", "-c",
                        'printf %s "$0" > /proc/sys/kernel/hostname && exec "$@"', f"build{i}",
                        "env", f"PYTHONPATH={REPO}", "PYTHONDONTWRITEBYTECODE=1", sys.executable,
                        *run, "--config", str(d / "hive.toml")]
        p = subprocess.Popen(["ip", "netns", "exec", f"mj-h{i}", *argv], stdin=subprocess.DEVNULL,
                             stdout=open(d / f"{name}.log", "ab"), stderr=subprocess.STDOUT)
        (d / f"{name}.pid").write_text(f"{p.pid}\n")
        procs.append(p)

    def cpu(new: list[int], name: str) -> float:
        total = 0
        for i in new:
            try:
                pid = int((lab.host_dir(i) / f"{name}.pid").read_text())
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except (OSError, ValueError):
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def wait(predicate, seconds: float) -> bool:
        deadline = time.time() + seconds
        while time.time() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return predicate()

    try:
        lab.up(base)  # (hive-lab compiles the code: the agents spawned below run it compiled)
        new = lab.add(joiners)
        for i in new:
            spawn(i, "build_advisor", "advisor")
        wait(lambda: all("build-advisor" in lab.log(i, "advisor") for i in new), 120)
        time.sleep(1)
        if hold:
            holder = lab.add(1)[0]
            release = lab.dir / "release"
            spawn(holder, "", "holder", [sys.executable, str(REPO / "tests/data/queue_holder.py"),
                                         str(lab.host_dir(holder) / "shared_secret"),
                                         f"{lab.subnet}.255", f"build{holder}", lab.ip(holder),
                                         str(release)])
            time.sleep(1)
        t0 = time.time()
        for i in new:
            spawn(i, "build_agent", "agent", freeze=frozen)
        print(f"{joiners} agents spawned in {time.time() - t0:.2f} s", flush=True)
        if frozen:
            pids = [int((lab.host_dir(i) / "agent.pid").read_text()) for i in new]

            def state(pid: int) -> str:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            ok = wait(lambda: all(state(p) == "T" for p in pids), 120)
            print(f"all started (frozen): {ok}, {time.time() - t0:.1f} s after the first spawn",
                  flush=True)
            time.sleep(2)
            everyone = list(range(1, base + 1)) + new
            c0 = {k: cpu(everyone, k) for k in ("agent", "advisor")}

            def schedstat(i: int) -> list[int]:  # ns on a CPU, ns waiting for one, slices
                pid = int((lab.host_dir(i) / "agent.pid").read_text())
                return [int(x) for x in Path(f"/proc/{pid}/schedstat").read_text().split()]
            s0 = {i: schedstat(i) for i in range(1, base + 1)}
            t0 = time.time()
            for p in pids:
                os.kill(p, 18)  # SIGCONT
        if hold:
            ok = wait(lambda: all("Waiting" in lab.log(i) for i in new), 120)
            print(f"all queued: {ok}, {time.time() - t0:.1f} s after the first spawn", flush=True)
            time.sleep(3)
            a0, d0 = cpu(new, "agent"), cpu(new, "advisor")
            time.sleep(5)
            print(f"CPU while {joiners} joiners wait: agents {(cpu(new, 'agent') - a0) / 5:.2f} s/s, "
                  f"advisors {(cpu(new, 'advisor') - d0) / 5:.2f} s/s", flush=True)
            t0 = time.time()
            release.touch()
        first: dict[int, float] = {}  # identity.json's first write (it is rewritten moments
        deadline = time.time() + 120  # later, once packages and role hooks are settled)
        while len(first) < len(new) and time.time() < deadline:
            for i in new:
                if i not in first:
                    try:
                        first[i] = (lab.host_dir(i) / "state" / "identity.json").stat().st_mtime
                    except FileNotFoundError:
                        pass
            time.sleep(0.02)
        got = [i for i in new if lab.identity(i)]
        if frozen:
            c1 = {k: cpu(everyone, k) - c0[k] for k in c0}
            s1 = {i: schedstat(i) for i in s0}
            time.sleep(max(0.0, t0 + 10 - time.time()))
            print("CPU in the 10 s after the thaw: " + ", ".join(
                f"{k}s {cpu(everyone, k) - c0[k]:.2f} s" for k in c0), flush=True)
            print("the hive's agents from the thaw until all identified, ms on a CPU / waiting "
                  "for one: " + ", ".join(
                      f"{(b[0] - a[0]) / 1e6:.0f}/{(b[1] - a[1]) / 1e6:.0f}"
                      for a, b in ((s0[i], s1[i]) for i in s0)), flush=True)
            print("CPU from the thaw until all identified: " + ", ".join(
                f"{k}s {c1[k]:.2f} s" for k in c0) +
                f", joiners' agents {cpu(new, 'agent'):.2f} s (with their start)", flush=True)
        times = sorted(first[i] - t0 for i in got if i in first)
        since = ("the release" if hold else "the thaw" if frozen
                 else "the first agent's start")
        print(f"{len(got)}/{joiners} identified; the last {times[-1]:.2f} s after {since} "
              f"(median {times[len(times) // 2]:.2f} s)" if got else "none identified")
        if not hold and not frozen:
            ups = []
            for i in new:
                for line in lab.log(i).splitlines():
                    if "Looking for hive peers" in line:
                        ups.append(datetime.datetime.strptime(
                            line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() - t0)
                        break
            if ups and got:
                print(f"agents up {min(ups):.2f}..{max(ups):.2f} s after the first spawn; the last "
                      f"identity {times[-1] - max(ups):.2f} s after the last agent was up")
        roles = collections.Counter(str(lab.role(i)) for i in range(1, base + 1))
        roles.update(str(lab.role(i)) for i in new)
        print("roles", dict(sorted(roles.items())))
        print("split votes", {i: lab.identity(i)["votes"] for i in got
                              if len(lab.identity(i)["votes"]) > 1})
        own = sum(lab.log(i).count("Asking peers for role assignment...\n") for i in new)
        followed = sum("Asking peers for role assignment in the round of" in lab.log(i)
                       for i in new)
        print(f"rounds of their own {own}; joiners advised in another's round {followed}; "
              f"load {os.getloadavg()}")

        def rcvbuf_errors(i: int) -> int:  # datagrams the host's kernel dropped: buffer full
            snmp = subprocess.run(["ip", "netns", "exec", f"mj-h{i}", "cat", "/proc/net/snmp"],
                                  capture_output=True, text=True).stdout.splitlines()
            udp = [line.split()[1:] for line in snmp if line.startswith("Udp:")]
            return int(dict(zip(udp[0], udp[1]))["RcvbufErrors"]) if len(udp) == 2 else -1
        print("UDP receive-buffer drops: hive", [rcvbuf_errors(i) for i in range(1, base + 1)],
              "joiners", sum(rcvbuf_errors(i) for i in new))
    finally:
        if "--keep-logs" in args:  # copy every host's logs before the lab goes
            keep = Path(args[args.index("--keep-logs") + 1])
            for d in lab.dir.glob("h*"):
                for f in d.glob("*.log"):
                    (keep / d.name).mkdir(parents=True, exist_ok=True)
                    (keep / d.name / f.name).write_bytes(f.read_bytes())
        for p in procs:
            p.kill()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        lab.down(check=False)


if __name__ == "__main__":
    main()
