"""The agent's local control socket: one request, one answer (now or later), root only, and a
loop that never blocks (driven here by a selector, as daemon.run drives it)."""

from __future__ import annotations

import os
import selectors
import shutil
import stat
import tempfile
import threading
import time

import pytest

from build_agent import control


class Loop:
    """What daemon.run gives a Service: watch/unwatch on one selector, a steady clock."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()

    def watch(self, fileobj, callback, events=selectors.EVENT_READ) -> None:
        try:
            self.selector.modify(fileobj, events, callback)
        except KeyError:
            self.selector.register(fileobj, events, callback)

    def unwatch(self, fileobj) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):
            pass

    def pump(self, server: control.ControlServer, until, limit: float = 5.0,
             must: bool = True) -> None:
        deadline = time.monotonic() + limit
        while not until() and time.monotonic() < deadline:
            for key, events in self.selector.select(0.02):
                key.data(events)
            server.tick(time.monotonic())
        assert until() or not must, "the loop did not get there"


@pytest.fixture
def served(tmp_path):
    loop = Loop()
    held = []

    def handler(request, reply):
        if request["op"] == "ping":
            return {"pong": request.get("n")}
        if request["op"] == "later":
            held.append(reply)
            reply.defer(time.monotonic() + request.get("wait", 10), lambda: {"late": True})
            return None
        if request["op"] == "boom":
            raise RuntimeError("a bug")
        return {"error": f"unknown request '{request['op']}'"}

    server = control.ControlServer(tmp_path / "control.sock", handler, loop.watch, loop.unwatch,
                                   time.monotonic)
    server.open()
    yield server, loop, held
    server.close()


def ask_in_thread(path, payload, timeout=5.0):
    box = {}

    def run():
        try:
            box["answer"] = control.request(path, payload, timeout)
        except control.ControlError as exc:
            box["error"] = str(exc)
    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_one_request_one_answer_and_the_socket_is_root_s_alone(served):
    server, loop, _ = served
    mode = os.stat(server.path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    thread, box = ask_in_thread(server.path, {"op": "ping", "n": 7})
    loop.pump(server, lambda: not thread.is_alive())
    assert box == {"answer": {"pong": 7}}
    thread, box = ask_in_thread(server.path, {"op": "boom"})
    loop.pump(server, lambda: not thread.is_alive())
    assert box["answer"]["error"] == "internal error in build-agent: RuntimeError: a bug"
    assert server.conns == []


def test_an_answer_can_come_later_or_at_its_time_limit(served):
    server, loop, held = served
    thread, box = ask_in_thread(server.path, {"op": "later"})
    loop.pump(server, lambda: held)
    loop.pump(server, lambda: False, limit=0.2, must=False)  # held: nothing answered yet
    assert thread.is_alive()
    held[0].send({"finally": 1})
    loop.pump(server, lambda: not thread.is_alive())
    assert box == {"answer": {"finally": 1}}
    thread, box = ask_in_thread(server.path, {"op": "later", "wait": 0.2})
    loop.pump(server, lambda: not thread.is_alive())
    assert box == {"answer": {"late": True}}


def test_a_client_that_is_not_root_is_refused(tmp_path):
    base = tempfile.mkdtemp(prefix="hive-control-test.", dir="/var/tmp")
    os.chmod(base, 0o711)  # (pytest's tmp_path is root's alone: nobody could not even look)
    loop = Loop()
    server = control.ControlServer(os.path.join(base, "control.sock"), lambda r, a: {"pong": 1},
                                   loop.watch, loop.unwatch, time.monotonic)
    server.open()
    try:
        # the file's mode stops others ...
        assert ask_as_nobody(loop, server) == "raised permission denied on " \
            f"{server.path}: only root may talk to build-agent (sudo hive ...)"
        # ... and past it, the peer's credentials do
        os.chmod(server.path, 0o666)
        assert ask_as_nobody(loop, server) == repr(
            {"error": "only root may use the agent's control socket (sudo hive ...)"})
    finally:
        server.close()
        shutil.rmtree(base, ignore_errors=True)


def ask_as_nobody(loop, server) -> str:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody and ask
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            answer = control.request(server.path, {"op": "ping"}, 5)
            os.write(write, repr(answer).encode())
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            os.write(write, f"raised {exc}".encode())
        finally:
            os._exit(0)
    os.close(write)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
        for key, events in loop.selector.select(0.02):
            key.data(events)
    said = os.read(read, 4096).decode()
    os.close(read)
    return said


def test_errors_of_the_client_are_one_line(tmp_path, served):
    with pytest.raises(control.ControlError) as err:
        control.request(tmp_path / "nothing.sock", {"op": "ping"})
    assert str(err.value).startswith("build-agent is not running here (no control socket at ")
    server, loop, _ = served
    second = control.ControlServer(server.path, lambda r, a: {}, loop.watch, loop.unwatch,
                                   time.monotonic)
    thread, _ = ask_in_thread(server.path, {"op": "ping"})  # keeps the first one answering
    with pytest.raises(control.ControlError) as err:
        # (the first server answers the probe connection from its loop in the thread below)
        pumping = threading.Thread(target=loop.pump, args=(server, lambda: not thread.is_alive()))
        pumping.start()
        second.open()
    pumping.join()
    assert "another build-agent answers on" in str(err.value)


def test_a_stale_socket_file_is_replaced(tmp_path):
    path = tmp_path / "control.sock"
    loop = Loop()
    first = control.ControlServer(path, lambda r, a: {"n": 1}, loop.watch, loop.unwatch,
                                  time.monotonic)
    first.open()
    first.sock.close()  # died without cleaning up: the file stays, nobody answers
    loop.unwatch(first.sock)
    second = control.ControlServer(path, lambda r, a: {"n": 2}, loop.watch, loop.unwatch,
                                   time.monotonic)
    second.open()
    thread, box = ask_in_thread(path, {"op": "x"})
    loop.pump(second, lambda: not thread.is_alive())
    assert box == {"answer": {"n": 2}}
    second.close()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(control.ControlError) as err:
        control.ControlServer(path, lambda r, a: {}, loop.watch, loop.unwatch,
                              time.monotonic).open()
    assert "exists and is not a socket" in str(err.value)
