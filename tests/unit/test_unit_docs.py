"""The README and the pages in docs/ stay linked and true to each other: every relative link and
#anchor in README.md and docs/*.md resolves (a file that exists, a heading that exists, as GitHub
makes anchors), every docs page can be reached from the README, and the README stays a
five-minute read that keeps the test command .ci/run runs.

docs/incoming/ holds sections other branches wrote for placing later: not checked here."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
README_MAX_LINES = 200

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")


def doc_pages() -> list[Path]:
    return sorted((REPO / "docs").glob("*.md"))


def prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the text (inline code and link markup reduced to their
    text), lowercased, without punctuation but '-' and '_', spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _number, line in prose_lines(path.read_text()):
        match = _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            n = counts.get(base, 0)
            counts[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path):
    """(line number, target) of every Markdown link or image outside code."""
    for number, line in prose_lines(path.read_text()):
        for match in _LINK.finditer(_CODE_SPAN.sub("", line)):
            yield number, match.group(1)


def broken_links(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):    # http:, https:, mailto:, file:
            continue
        where = f"{path.relative_to(REPO)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if REPO not in dest.parents and dest != REPO:
            problems.append(f"{where}: points outside the repository")
            continue
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor:
            if dest.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest):
                problems.append(f"{where}: no heading with anchor #{anchor} in "
                                f"{dest.relative_to(REPO)}")
    return problems


@pytest.mark.parametrize("path", [README] + doc_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(path):
    assert broken_links(path) == []


def test_the_link_check_finds_a_broken_file_anchor_and_page(tmp_path, monkeypatch):
    """The check above really fails on what it is meant to catch."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Page A\n\n## The `hive` command: status\n\n"
                               "```\n[not a link](nowhere.md)\n```\n")
    page = docs / "b.md"
    page.write_text("# B\n\n[ok](a.md#the-hive-command-status) [ok](#b) `[code](x.md)`\n"
                    "[gone](missing.md) [bad anchor](a.md#nope) [self](#nope-here)\n"
                    "![img](pic.png) [up](../../outside.md) [web](https://example.org/x#y)\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    problems = broken_links(page)
    assert [p.split(": ", 2)[1] for p in problems] == [
        "missing.md", "a.md#nope", "#nope-here", "pic.png", "../../outside.md"], problems


def test_anchors_follow_githubs_rules():
    assert slug("Healing: roles follow the hive's needs") == "healing-roles-follow-the-hives-needs"
    assert slug("The `hive` command") == "the-hive-command"
    assert slug("bootstrap.sh: network facts and the next free address") == \
        "bootstrapsh-network-facts-and-the-next-free-address"
    assert slug("Healing: heal time and chaos (`scripts/hive-chaos`)") == \
        "healing-heal-time-and-chaos-scriptshive-chaos"


def reachable_from_readme() -> set[Path]:
    seen: set[Path] = set()
    todo = [README]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for _number, target in links(page):
            file_part = target.partition("#")[0]
            if file_part.endswith(".md") and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):
                dest = (page.parent / file_part).resolve()
                if dest.exists():
                    todo.append(dest)
    return seen


def test_every_docs_page_is_linked_from_the_readme():
    reached = reachable_from_readme()
    assert [str(p.relative_to(REPO)) for p in doc_pages() if p.resolve() not in reached] == []
    linked_directly = {(REPO / t.partition("#")[0]).resolve() for _n, t in links(README)}
    for name in ("install", "configuration", "policies", "protocol", "security", "operations",
                 "performance", "tests"):
        assert (REPO / "docs" / f"{name}.md").resolve() in linked_directly, name


def test_readme_is_a_five_minute_read_with_the_test_command_ci_runs():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    ci_command = re.search(r"^# The README's test command\.\n(.+)$",
                           (REPO / ".ci/run").read_text(), re.M).group(1).strip()
    assert f"sudo {ci_command}\n" in text, ci_command
    for heading in ("## Quick start", "## Try a hive on one machine", "## Tests",
                    "## Where to look next"):
        assert f"\n{heading}\n" in text, heading
    # the seed's transcripts: the founder's and a joiner's
    for line in ("No peers found; this may be the first node (founder role).",
                 "Consensus: I am a 'builder'", "Install complete."):
        assert line in text, line

