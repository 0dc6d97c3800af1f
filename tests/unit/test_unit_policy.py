"""suggest_role policies: the default table, loading policy files, fallbacks, shipped examples."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from build_advisor import policy as policy_mod
from build_advisor.policy import PolicyError, advise, default_suggest_role, load_policy
from build_agent.protocol import make_payload
from hive_fakes import policy_copy

POLICIES = Path(policy_mod.__file__).resolve().parent / "policies"

CONTROLLER = ("controller", ["ansible", "git"], "first node becomes controller")
BUILDER = ("builder", ["openjdk-17-jdk", "maven", "git", "build-essential"],
           "cluster needs builders")
RUNNER = ("runner", ["python3-pytest", "nodejs", "npm"], "have builders, need test runners")


def member(i: int, role: str, **caps) -> dict:
    return {"node_id": f"n{i}", "hostname": f"build{i}", "ip": f"10.0.0.{i}", "role": role,
            "capabilities": dict(caps)}


def view_of(self_role: str, *peer_roles: str) -> dict:
    me = member(0, self_role)
    peers = [member(i + 1, role) for i, role in enumerate(peer_roles)]
    return {"self": me, "peers": peers, "members": [me] + peers}


def newcomer(**caps) -> dict:
    return {"node_id": "new", "hostname": "build99", "ip": "10.0.0.99",
            "capabilities": {"cpu_cores": 4, "ram_gb": 8.0, "has_gpu": False, "arch": "x86_64",
                             "os": "Ubuntu", "docker_installed": False, **caps}}


def as_tuple(result: dict) -> tuple:
    return result["role"], result["packages"], result["reason"]


T0 = 1_795_694_400.0


def build(answer: dict) -> dict:
    """Stands in for the advisor's ADVICE builder."""
    return make_payload("ADVICE", "adv-1", "build0", "10.0.0.1", T0, to="new",
                        suggested_role=answer["role"], packages=answer["packages"],
                        config=answer["config"], reason=answer["reason"])


def run(policy, view: dict, comer: dict) -> dict:
    """advise(), and the answer it sends, as a receiver decodes it."""
    payload = advise(policy, view, comer, build)
    return {"role": payload["suggested_role"], "packages": payload["packages"],
            "config": payload["config"], "reason": payload["reason"]}


# --- the default table ----------------------------------------------------------------------

@pytest.mark.parametrize("peers, expected", [
    (0, CONTROLLER), (1, BUILDER), (2, BUILDER), (3, RUNNER), (4, RUNNER), (50, RUNNER),
])
def test_default_table(peers, expected):
    result = default_suggest_role(view_of("founder", *["builder"] * peers), newcomer())
    assert as_tuple(result) == expected
    assert result["config"] == {}


def test_default_sequence_founder_controller_builder_builder_runner():
    # Node 1 founds; each next node is advised by a member that sees the others as peers.
    roles = ["founder"]
    for _ in range(5):
        advisor_role, *peer_roles = roles
        roles.append(default_suggest_role(view_of(advisor_role, *peer_roles), newcomer())["role"])
    assert roles == ["founder", "controller", "builder", "builder", "runner", "runner"]


def test_default_returns_fresh_copies():
    first = default_suggest_role(view_of("founder"), newcomer())
    first["packages"].append("evil")
    first["config"]["x"] = 1
    again = default_suggest_role(view_of("founder"), newcomer())
    assert again["packages"] == ["ansible", "git"] and again["config"] == {}


def test_load_policy_empty_path_is_the_default():
    assert load_policy("") is default_suggest_role


# --- loading a policy file --------------------------------------------------------------------

def write(tmp_path: Path, text: str, name: str = "policy.py") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_load_policy_from_a_file(tmp_path):
    path = write(tmp_path, "def suggest_role(view, newcomer):\n"
                           "    return {'role': 'custom', 'packages': ['git'], 'config': {},"
                           " 'reason': 'mine'}\n")
    function = load_policy(path)
    assert function(view_of("founder"), newcomer())["role"] == "custom"


def test_missing_policy_file(tmp_path):
    path = str(tmp_path / "nope.py")
    with pytest.raises(PolicyError, match=r"policy file .*nope\.py not found"):
        load_policy(path)


def test_policy_file_that_is_not_python(tmp_path):
    path = write(tmp_path, "role = builder\n", name="policy.toml")
    with pytest.raises(PolicyError, match="not a Python file"):
        load_policy(path)


def test_policy_with_a_syntax_error(tmp_path):
    path = write(tmp_path, "def suggest_role(view, newcomer)\n    return {}\n")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert "failed to load" in str(info.value) and "SyntaxError" in str(info.value)
    assert path in str(info.value)


def test_policy_that_raises_while_loading(tmp_path):
    path = write(tmp_path, "import no_such_module_for_hive_tests\n")
    with pytest.raises(PolicyError, match="failed to load: ModuleNotFoundError"):
        load_policy(path)


def test_policy_without_suggest_role(tmp_path):
    path = write(tmp_path, "def suggest(view, newcomer):\n    return {}\n")
    with pytest.raises(PolicyError, match=r"does not define suggest_role\(view, newcomer\)"):
        load_policy(path)


def test_policy_whose_suggest_role_is_not_callable(tmp_path):
    path = write(tmp_path, "suggest_role = {'role': 'builder'}\n")
    with pytest.raises(PolicyError, match="does not define suggest_role"):
        load_policy(path)


# String annotations (the __future__ import, or quoted types) make @dataclass look the class's
# module up in sys.modules.
DATACLASS_POLICY = """\
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Plan:
    role: str
    packages: list[str] = field(default_factory=list)


PLAN = Plan("packer", ["git"])


def suggest_role(view, newcomer):
    return {"role": PLAN.role, "packages": PLAN.packages, "config": {}, "reason": "dataclass"}
"""


def test_policy_using_dataclass_loads(tmp_path):
    function = load_policy(write(tmp_path, DATACLASS_POLICY))
    assert function(view_of("founder"), newcomer())["role"] == "packer"


def test_loading_twice_and_a_failed_load_leave_a_working_policy(tmp_path):
    first = load_policy(write(tmp_path, DATACLASS_POLICY, name="first.py"))
    with pytest.raises(PolicyError):
        load_policy(write(tmp_path, "import no_such_module_for_hive_tests\n", name="bad.py"))
    assert first(view_of("founder"), newcomer())["reason"] == "dataclass"


# --- who may write the policy: root alone (it runs with the hive's secret) ----------------------

MARKER_POLICY = """\
import pathlib
pathlib.Path(__file__).with_name("policy-ran").write_text("ran")


def suggest_role(view, newcomer):
    return {"role": "builder"}
"""


def marker_policy(tmp_path: Path) -> Path:
    directory = tmp_path / "conf"
    directory.mkdir(mode=0o755)
    path = directory / "policy.py"
    path.write_text(MARKER_POLICY)
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646, 0o620, 0o777])
def test_refuses_a_policy_writable_by_group_or_others(tmp_path, mode):
    path = marker_policy(tmp_path)
    path.chmod(mode)
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    assert str(info.value) == (
        f"policy {path} has mode 0{mode:o} (writable by group or others): run 'chmod go-w {path}'"
        f" (the advisor runs the policy with the hive's secret)")
    assert not path.with_name("policy-ran").exists()  # nothing of it ran


def test_refuses_a_policy_owned_by_another_user(tmp_path):
    path = marker_policy(tmp_path)
    os.chown(path, 1000, 1000)
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    assert str(info.value) == (f"policy {path} is owned by uid 1000, not root: run 'chown "
                               f"root:root {path}' (the advisor runs the policy with the hive's "
                               f"secret)")
    assert not path.with_name("policy-ran").exists()


@pytest.mark.parametrize("owner, mode, problem", [
    (0, 0o777, "has mode 0777 (writable by group or others): run 'chmod go-w {dir}'"),
    (0, 0o775, "has mode 0775 (writable by group or others): run 'chmod go-w {dir}'"),
    (1000, 0o755, "is owned by uid 1000, not root: run 'chown root:root {dir}'"),
])
def test_refuses_a_policy_in_a_directory_others_can_write(tmp_path, owner, mode, problem):
    path = marker_policy(tmp_path)
    os.chown(path.parent, owner, owner)
    path.parent.chmod(mode)
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    assert f"policy {path}: directory {path.parent} " in str(info.value)
    assert problem.format(dir=path.parent) in str(info.value)
    assert not path.with_name("policy-ran").exists()


def test_refuses_a_link_to_a_policy_in_a_directory_others_can_write(tmp_path):
    target = marker_policy(tmp_path)
    target.parent.chmod(0o777)
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    (safe / "policy.py").symlink_to(target)
    with pytest.raises(PolicyError, match=f"directory {target.parent} has mode 0777"):
        load_policy(str(safe / "policy.py"))
    assert not target.with_name("policy-ran").exists()


def test_accepts_root_policy_in_a_sticky_shared_directory(tmp_path):
    # Like /tmp: others may add files but cannot replace root's.
    path = marker_policy(tmp_path)
    path.parent.chmod(0o1777)
    assert load_policy(str(path))(view_of("founder"), newcomer())["role"] == "builder"
    assert path.with_name("policy-ran").exists()


def test_a_fifo_is_refused_without_hanging(tmp_path):
    path = tmp_path / "policy.py"
    os.mkfifo(path, 0o644)
    with pytest.raises(PolicyError, match="is not a regular file"):
        load_policy(str(path))


# --- advise(): run a policy, check its answer as receivers will, fall back on trouble ----------

def test_advise_passes_a_good_answer_through():
    def custom(view, comer):
        return {"role": "ml-trainer", "packages": ["python3-pip"], "config": {"gpus": 2},
                "reason": "x" * 400, "extra": "ignored"}
    result = run(custom, view_of("founder"), newcomer())
    assert result == {"role": "ml-trainer", "packages": ["python3-pip"], "config": {"gpus": 2},
                      "reason": "x" * 300}


def test_advise_fills_optional_keys():
    result = run(lambda v, n: {"role": "builder"}, view_of("founder"), newcomer())
    assert result == {"role": "builder", "packages": [], "config": {}, "reason": ""}


def test_advise_falls_back_when_the_policy_raises(caplog):
    def broken(view, comer):
        raise KeyError("gpu")
    with caplog.at_level(logging.ERROR, logger="build_advisor.policy"):
        result = run(broken, view_of("founder", "builder"), newcomer())
    assert as_tuple(result) == BUILDER
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "build99" in record.getMessage() and "KeyError" in record.getMessage()
    assert "default" in record.getMessage()


@pytest.mark.parametrize("garbage", [
    None, [], "builder", 5,
    {"packages": ["git"]},                                 # no role
    {"role": "Bad Role"},
    {"role": ""},
    {"role": None},
    {"role": "builder\n"},
    {"role": "builder", "packages": ["-oops"]},
    {"role": "builder", "packages": ["rm -rf"]},
    {"role": "builder", "packages": ["git", "rm -rf /"]},
    {"role": "builder", "packages": "git"},
    {"role": "builder", "packages": ("git",)},
    {"role": "builder", "packages": [None]},
    {"role": "builder", "config": ["a"]},
    {"role": "builder", "reason": 5},
])
def test_advise_falls_back_when_the_policy_returns_garbage(garbage, caplog):
    with caplog.at_level(logging.ERROR, logger="build_advisor.policy"):
        result = run(lambda v, n: garbage, view_of("founder"), newcomer())
    assert as_tuple(result) == CONTROLLER
    assert any(r.levelno == logging.ERROR and "Policy failed" in r.getMessage()
               for r in caplog.records)


class Opaque:
    pass


def circular() -> dict:
    config: dict = {}
    config["self"] = config
    return config


# Answers the old check let through, though every receiver drops the ADVICE they make (or it
# cannot even be encoded): each must fall back to the default, with one error line saying why.
@pytest.mark.parametrize("answer, why", [
    ({"role": "builder", "config": {"blob": "x" * 5000}}, "bad field: config"),
    ({"role": "builder", "packages": [f"pkg{i}" for i in range(65)]}, "bad field: packages"),
    ({"role": "builder", "packages": ["p" + "x" * 127] * 64}, "oversized"),
    ({"role": "builder", "config": {"ratio": float("nan")}}, "not JSON: Out of range float"),
    ({"role": "builder", "config": {"limit": float("inf")}}, "not JSON: Out of range float"),
    ({"role": "builder", "config": {"tags": {"gpu", "big"}}}, "not JSON: Object of type set"),
    ({"role": "builder", "packages": {"git"}}, "not JSON: Object of type set"),
    ({"role": "builder", "config": {"raw": b"\x00"}}, "not JSON: Object of type bytes"),
    ({"role": "builder", "config": {"obj": Opaque()}}, "not JSON: Object of type Opaque"),
    ({"role": "builder", "config": {(1, 2): "tuple key"}}, "not JSON: keys must be"),
    ({"role": "builder", "config": circular()}, "not JSON: Circular reference"),
    ({"role": "builder", "config": {"x": "y"}, "reason": "é" * 300,
      "packages": ["p" + "x" * 127] * 50}, "oversized"),  # non-ASCII travels as \\uXXXX
])
def test_advise_checks_the_answer_as_every_receiver_will(answer, why, caplog):
    with caplog.at_level(logging.ERROR, logger="build_advisor.policy"):
        result = run(lambda v, n: answer, view_of("founder", "builder"), newcomer())
    assert as_tuple(result) == BUILDER and result["config"] == {}
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("Policy failed for build99 (invalid answer: ") and why in line, line
    assert line.endswith("); using the default policy")


def test_the_largest_answer_receivers_accept_passes():
    answer = {"role": "r" * 63, "packages": [f"p{i:03d}" + "x" * 60 for i in range(64)],
              "config": {"k": "v" * 3000}, "reason": "y" * 300}
    assert run(lambda v, n: answer, view_of("founder"), newcomer()) == answer


def test_the_advice_sent_is_a_plain_copy():
    # The policy keeps (and may later change) what it returned: what goes out is a copy.
    shared = {"packages": ["git"], "config": {"slots": [1, 2]}}
    result = run(lambda v, n: {"role": "builder", **shared}, view_of("founder"), newcomer())
    shared["packages"].append("evil")
    shared["config"]["slots"].append(3)
    assert result["packages"] == ["git"] and result["config"] == {"slots": [1, 2]}


def test_advise_with_the_default_policy_does_not_log(caplog):
    with caplog.at_level(logging.DEBUG):
        result = run(default_suggest_role, view_of("founder", "a", "b", "c"), newcomer())
    assert as_tuple(result) == RUNNER
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_advise_with_a_loaded_failing_policy_file(tmp_path, caplog):
    path = write(tmp_path, "def suggest_role(view, newcomer):\n    return 1 / 0\n")
    function = load_policy(path)  # loads fine; fails only when run
    with caplog.at_level(logging.ERROR):
        result = run(function, view_of("founder", "builder", "builder"), newcomer())
    assert as_tuple(result) == BUILDER
    assert "ZeroDivisionError" in caplog.text


# --- the shipped example policies -----------------------------------------------------------------

@pytest.fixture(scope="module")
def role_balance(tmp_path_factory):
    return load_policy(policy_copy(POLICIES / "role_balance.py", tmp_path_factory.mktemp("p")))


@pytest.fixture(scope="module")
def gpu_aware(tmp_path_factory):
    return load_policy(policy_copy(POLICIES / "gpu_aware.py", tmp_path_factory.mktemp("p")))


def test_role_balance_first_a_controller(role_balance):
    result = run(role_balance, view_of("founder"), newcomer())
    assert result["role"] == "controller" and result["packages"] == ["ansible", "git"]


@pytest.mark.parametrize("existing, expected", [
    (["controller"], "builder"),
    (["controller", "builder"], "builder"),
    (["controller", "builder", "builder"], "builder"),
    (["controller", "builder", "builder", "builder"], "runner"),
    (["controller", "builder", "builder", "builder", "runner", "runner"], "runner"),
    (["controller", "builder", "builder", "builder", "runner", "runner", "runner"], "builder"),
    (["controller", "builder"] * 2 + ["runner"] * 3, "builder"),  # only 2 builders
])
def test_role_balance_keeps_min_builders_then_balances(role_balance, existing, expected):
    result = run(role_balance, view_of("founder", *existing), newcomer())
    assert result["role"] == expected
    if expected == "builder":
        assert "openjdk-17-jdk" in result["packages"]
    if expected == "runner":
        assert result["packages"] == ["python3-pytest", "nodejs", "npm"]


def test_role_balance_counts_the_advisor_itself(role_balance):
    # The advisor is the controller: the newcomer must not be told to become one.
    view = view_of("controller")
    assert run(role_balance, view, newcomer())["role"] == "builder"


def test_role_balance_sequence(role_balance):
    roles = ["founder"]
    for _ in range(9):
        advisor_role, *peer_roles = roles
        roles.append(run(role_balance, view_of(advisor_role, *peer_roles), newcomer())["role"])
    assert roles == ["founder", "controller", "builder", "builder", "builder", "runner",
                     "runner", "runner", "builder", "runner"]


def test_gpu_aware_gpu_node_becomes_ml_trainer(gpu_aware):
    view = view_of("founder", "controller", "builder")
    view["peers"][1]["role"] = "ml-trainer"
    result = run(gpu_aware, view, newcomer(has_gpu=True))
    assert result["role"] == "ml-trainer"
    assert result["packages"] == ["nvidia-cuda-toolkit", "python3-pip"]
    assert result["config"] == {"gpus": 1}
    assert "1 ml-trainer" in result["reason"]


@pytest.mark.parametrize("caps", [{"has_gpu": False}, {}])
def test_gpu_aware_other_nodes_get_the_default(gpu_aware, caps):
    comer = newcomer()
    comer["capabilities"] = caps
    for peers in (0, 1, 3):
        view = view_of("founder", *["builder"] * peers)
        assert run(gpu_aware, view, comer) == run(default_suggest_role, view, comer)


def test_gpu_aware_tolerates_missing_capabilities(gpu_aware, caplog):
    comer = {"node_id": "new", "hostname": "build99", "ip": "10.0.0.99"}
    with caplog.at_level(logging.ERROR):
        assert run(gpu_aware, view_of("founder"), comer)["role"] == "controller"
    assert "Policy failed" not in caplog.text
