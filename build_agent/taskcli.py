"""hive task: build work through the controller's running agent (its local control socket).

  hive task run [--role R] [--capability C] [--repo URL] [--timeout S] [--retries N] -- CMD ...
                            wait for it and print its result; exit with its exit status
  hive task submit ... -- CMD ...   queue it, print its id
  hive task list            every task this controller knows: id, state, worker, role, age, command
  hive task show ID         everything known about one task, with the last lines of its output
  hive task wait ID         wait for it; exit with its exit status
  hive task cancel ID       stop it (queued: at once; running: the worker stops it)
  hive task logs ID         its whole output, fetched from the worker in chunks

Exit status of run/wait: the task's own; 128+N if signal N killed it; 124 at its time limit;
125 if it could not run or hive could not submit it; 75 if it was lost; 130 if cancelled.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time

from . import control, timing
from .config import Config

CLI_FAILED = 125  # run/wait: hive itself could not do it (as `docker run` and `timeout` say)
RECONNECT = 60.0  # seconds `hive task wait` keeps trying while build-agent restarts


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    task = sub.add_parser("task", parents=[common], help="build work on the hive's workers",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ops = task.add_subparsers(dest="task_command", metavar="SUBCOMMAND", required=True)
    for name, text in (("run", "run a command on a worker and wait for its result"),
                       ("submit", "queue a command, print the task id")):
        p = ops.add_parser(name, parents=[common], help=text)
        p.add_argument("--role", help="a worker of this role (e.g. builder)")
        p.add_argument("--capability", help="a worker with this capability (e.g. has_gpu)")
        p.add_argument("--repo", help="git clone this first; the command runs in the clone")
        p.add_argument("--timeout", type=float, default=None,
                       help="time limit in seconds (default [tasks] timeout, 3600)")
        p.add_argument("--retries", type=int, default=None,
                       help="re-queue it this often if its worker vanishes (default 1)")
        p.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND",
                       help="-- COMMAND [ARG...]")
    for name, text in (("show", "everything known about one task"),
                       ("wait", "wait for a task; exit with its exit status"),
                       ("cancel", "cancel a task"),
                       ("logs", "a task's whole output, from its worker")):
        p = ops.add_parser(name, parents=[common], help=text)
        p.add_argument("id", help="task id (or a unique prefix of at least 4 characters)")
        if name == "logs":
            p.add_argument("--attempt", type=int, default=None, help="an earlier attempt's output")
    ops.add_parser("list", parents=[common], help="the controller's tasks")


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _fail(message: str, code: int = 1) -> int:
    print(f"hive: {message}", file=sys.stderr)
    return code


def _ask(config: Config, payload: dict, timeout: float = 10.0) -> dict:
    answer = control.request(config.control_path, payload, timeout)
    if "error" in answer:
        raise control.ControlError(str(answer["error"]))
    return answer


def _headline(task: dict, text: str) -> str:
    """'task ID on build3 (builder): exit 0 in 41.2 s' from the agent's description."""
    result = task.get("result") or {}
    notes = [task["role"]] if task.get("role") else []
    if (result.get("attempt") or 1) > 1:
        notes.append(f"attempt {result['attempt']}")
    where = f" on {result['worker']}" if result.get("worker") else ""
    if where and notes:
        where += f" ({', '.join(notes)})"
    what = text.split("): ", 1)[1] if text.startswith("on ") and "): " in text else text
    return f"task {task['id']}{where}: {what}"


def _show_result(answer: dict, as_json: bool) -> int:
    task = answer["task"]
    status = answer.get("exit_status", CLI_FAILED)
    if as_json:
        _print_json({**task, "exit_status": status})
        return status
    print(_headline(task, answer.get("text") or task["state"]))
    output = (task.get("result") or {}).get("output") or ""
    if output:
        sys.stdout.write(output if output.endswith("\n") else output + "\n")
    return status


def _wait(config: Config, task_id: str, as_json: bool) -> int:
    give_up = None
    while True:
        try:
            answer = _ask(config, {"op": "task.wait", "id": task_id, "max": timing.TASK_WAIT_MAX},
                          timeout=timing.TASK_WAIT_MAX + 15)
            give_up = None
        except control.ControlError as exc:
            if "not running" not in str(exc) and "closed the connection" not in str(exc):
                return _fail(str(exc), CLI_FAILED)
            give_up = give_up or time.monotonic() + RECONNECT
            if time.monotonic() > give_up:
                return _fail(f"{exc}; task {task_id} is still queued or running there",
                             CLI_FAILED)
            time.sleep(0.5)
            continue
        if answer.get("finished"):
            return _show_result(answer, as_json)


def cmd_task(config: Config, args) -> int:
    op = args.task_command
    as_json = args.json
    try:
        if op in ("run", "submit"):
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not command:
                return _fail("empty command: give it after --, e.g. hive task run --role "
                             "builder -- make test", CLI_FAILED if op == "run" else 1)
            answer = _ask(config, {"op": "task.submit", "argv": command, "repo": args.repo,
                                   "role": args.role, "capability": args.capability,
                                   "timeout": args.timeout, "retries": args.retries})
            task = answer["task"]
            if op == "submit":
                if as_json:
                    _print_json(task)
                else:
                    print(task["id"])
                return 0
            try:
                return _wait(config, task["id"], as_json)
            except KeyboardInterrupt:
                return _fail(f"stopped waiting; task {task['id']} goes on (hive task wait "
                             f"{task['id']}, hive task cancel {task['id']})", 130)
        if op == "list":
            answer = _ask(config, {"op": "task.list"})
            if as_json:
                _print_json(answer["tasks"])
                return 0
            rows = [("ID", "STATE", "WORKER", "ROLE", "AGE", "COMMAND")]
            for t in answer["tasks"]:
                rows.append((t["id"], t["state"], t["worker"] or "-", t["role"] or "-",
                             _age(t["age"]), t["command"][:60]))
            widths = [max(len(r[i]) for r in rows) for i in range(5)]
            for row in rows:
                print("  ".join(c.ljust(widths[i]) for i, c in enumerate(row[:5])) + "  " + row[5])
            if not answer["tasks"]:
                print("(no tasks)")
            return 0
        if op == "show":
            answer = _ask(config, {"op": "task.show", "id": args.id})
            if as_json:
                _print_json({**answer["task"], "exit_status": answer.get("exit_status")})
                return 0
            _print_show(answer)
            return 0
        if op == "wait":
            return _wait(config, args.id, as_json)
        if op == "cancel":
            answer = _ask(config, {"op": "task.cancel", "id": args.id})
            task = answer["task"]
            if as_json:
                _print_json({**task, "cancel": answer["cancel"]})
            elif answer["cancel"] == "cancelled":
                print(f"Cancelled task {task['id']} (it was queued)")
            else:
                print(f"Cancelling task {task['id']}: {task['worker']} stops it "
                      f"(hive task wait {task['id']})")
            return 0
        if op == "logs":
            return _logs(config, args, as_json)
    except control.ControlError as exc:
        return _fail(str(exc), CLI_FAILED if op in ("run", "wait") else 1)
    return _fail(f"unknown task command {op}")


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _print_show(answer: dict) -> None:
    t = answer["task"]
    result = t.get("result") or {}
    print(f"Task:      {t['id']}")
    print(f"Command:   {t['command']}")
    if t.get("repo"):
        print(f"Repo:      {t['repo']}")
    print(f"Placement: {'role ' + t['role'] if t.get('role') else 'any role'}"
          + (f", capability {t['capability']}" if t.get("capability") else ""))
    print(f"State:     {t['state']}" + (f" ({answer.get('text')})" if t["state"] not in
                                          ("queued", "running") else ""))
    if answer.get("exit_status") is not None:
        print(f"Exit:      {answer['exit_status']}")
    print(f"Submitted: {t['submitted_at']} ({_age(t['age'])} ago)")
    if t.get("finished_at"):
        print(f"Finished:  {t['finished_at']}")
    print(f"Limits:    {t['timeout']:g} s, {t['retries']} retr{'y' if t['retries'] == 1 else 'ies'}")
    for a in t["attempts"]:
        line = f"Attempt {a['n']}: {a['worker']}: {a['state']}"
        if a.get("outcome"):
            line += f" ({a['outcome']})"
        if a.get("error"):
            line += f": {a['error']}"
        print(line)
    if result.get("output"):
        print("Output (last lines):")
        output = result["output"]
        sys.stdout.write(output if output.endswith("\n") else output + "\n")


def _logs(config: Config, args, as_json: bool) -> int:
    offset, chunks = 0, []
    worker = attempt = None
    deadline_per_chunk = timing.TASK_LOGS_RETRY * (timing.TASK_LOGS_TRIES + 2) + 5
    while True:
        answer = _ask(config, {"op": "task.logs", "id": args.id, "offset": offset,
                               "attempt": args.attempt}, timeout=deadline_per_chunk)
        data = base64.b64decode(answer.get("data") or "")
        worker, attempt = answer.get("worker"), answer.get("attempt")
        if as_json:
            chunks.append(data)
        elif data:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        offset += len(data)
        if answer.get("done") or not data:
            break
    if as_json:
        _print_json({"id": args.id, "worker": worker, "attempt": attempt, "bytes": offset,
                     "complete": bool(answer.get("done")),
                     "output": b"".join(chunks).decode("utf-8", errors="replace")})
    return 0
