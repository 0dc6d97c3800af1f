"""When a need is real, and whether this node is the one to move: grace and hysteresis.

Pure logic (``now`` passed in, a reading of the steady clock).  The plan itself (who moves)
is ``plan.compute``; this decides *when*:
- every node logs the plan's ``Role check: ...`` line once, when the need appears;
- a need must persist, with the same mover, for ``grace`` seconds before anyone acts, so a
  node restarting or a lost heartbeat does not reshuffle the hive; then only the chosen mover
  acts, and only while no other member is in the middle of a move;
- a move that gives nothing (no advice, or the hive said "stay") starts the grace again.
The cool-down after a move is part of the plan (a member that moved recently is not chosen).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .plan import Move, Plan


@dataclass
class Step:
    lines: list[str] = field(default_factory=list)  # to log (info), once per need
    move: Move | None = None                        # this node moves now
    wake: float = float("inf")                      # when to look again (steady clock)


class Healer:
    def __init__(self, node_id: str, grace: float) -> None:
        self.node_id = node_id
        self.grace = grace
        self._need: tuple[str, str, str] | None = None
        self._since = 0.0
        self._announced: tuple[str, str, str] | None = None

    def step(self, plan: Plan | None, now: float, someone_moving: bool) -> Step:
        if plan is None or not plan.moves:
            self._need = self._announced = None
            return Step()
        first = plan.moves[0]  # one move at a time, in the plan's order
        need = (first.node_id, first.from_role, first.to_role)
        if need != self._need:
            self._need, self._since = need, now
        step = Step()
        if self._announced != need:  # said at once, on every node (their views agree)
            self._announced = need
            step.lines.append(plan.need_line(first))
        due = self._since + self.grace
        if now < due:
            step.wake = due
        elif first.node_id == self.node_id and not someone_moving:
            step.move = first
        return step

    def retry_later(self, now: float) -> None:
        """The move gave nothing: the need must persist another grace period."""
        self._since = now
        self._announced = None
