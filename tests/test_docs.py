"""The README's and docs/'s relative links: each names a file of the repository and, after '#', a
heading of that file (GitHub's anchor for it)."""

from __future__ import annotations

import functools
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose_lines(path: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
            elif not fenced:
                out.append((number, line))
    return out


@functools.cache
def anchors(path: str) -> frozenset[str]:
    """The page's heading anchors; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path):
        m = re.match(r"#+\s+(.*)", line)
        if m:
            s = slug(m.group(1))
            out.add(f"{s}-{seen[s]}" if s in seen else s)
            seen[s] = seen.get(s, 0) + 1
    return frozenset(out)


def broken_links(path: str) -> list[str]:
    bad = []
    for number, line in prose_lines(path):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
            where = f"{os.path.relpath(path, ROOT)}:{number}: {target}"
            if not os.path.exists(dest):
                bad.append(f"{where} (no such file)")
            elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                bad.append(f"{where} (no such heading)")
    return bad


def test_slugs_follow_github():
    assert slug("Training regimes: `train_targets=last` against `all` (epoch time and memory)") == \
        "training-regimes-train_targetslast-against-all-epoch-time-and-memory"
    assert slug("ml-100k, L=50: one seed, `all` only") == "ml-100k-l50-one-seed-all-only"


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A heading\n\n[ok](#a-heading) [gone](#another) [file](missing.md)\n```\n# not a heading\n```\n"
                    "## A heading\n[ok](#a-heading-1) [gone](#a-heading-2) [gone](#not-a-heading)\n")
    assert [b.split(": ", 1)[1] for b in broken_links(str(page))] == [
        "#another (no such heading)", "missing.md (no such file)", "#a-heading-2 (no such heading)",
        "#not-a-heading (no such heading)"]


@pytest.mark.parametrize("path", DOCS, ids=[os.path.relpath(p, ROOT) for p in DOCS])
def test_relative_links_resolve(path):
    assert broken_links(path) == []


# ---------------------------------------------------------------------------------------
# shown commands: every option of a `run_recbole_ssm.py` (or `python -m recbole_ssm.data prepare`)
# command shown in the README and the docs (the journal's records aside) is one the command takes

SHOWN = [p for p in DOCS if os.sep + "journal" + os.sep not in p and os.sep + "reference" + os.sep not in p]
COMMAND = re.compile(r"(?:python run_recbole_ssm\.py|python -m recbole_ssm\.data)((?: [^;|>&#]*)?)")
NO_SETTINGS = {"recommend", "evaluate", "serve", "bench recommend", "bench serve"}


def shown_commands(path: str) -> list[tuple[int, str, list[str]]]:
    """(line, sub-command, options) of each command in the page's fenced code blocks."""
    import shlex

    out, fenced, joined, first = [], False, "", 0
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.lstrip().startswith("```"):
                fenced = not fenced
                continue
            if not fenced:
                continue
            joined, first = (joined + " " + line.strip(), first) if joined else (line.strip(), number)
            if joined.endswith("\\"):
                joined = joined[:-1]
                continue
            for m in COMMAND.finditer(joined):
                words = shlex.split(m.group(1).replace("$(", "").replace("`", ""), posix=True)
                sub = []
                while words and not words[0].startswith("-"):
                    sub.append(words.pop(0))
                name = " ".join(sub[:2] if sub[:1] == ["bench"] else sub[:1])
                out.append((first, name, [w for w in words if w.startswith("--")]))
            joined = ""
    return out


@functools.cache
def accepted(name: str) -> frozenset | None:
    """The options ``name`` takes (settings included where it passes them on); None: not checked."""
    import importlib

    from recbole_ssm.settings_check import RULES, known_keys

    settings = set(known_keys()) | set(RULES) | {"resume", "nproc", "help"}  # as check_user_settings knows them
    if name in ("prepare",):
        from recbole_ssm.data.cli import build_parser

        return frozenset(s.lstrip("-") for a in build_parser()._actions for s in a.option_strings)
    if name == "":
        return frozenset(settings)
    from recbole_ssm.cli import SUBCOMMANDS

    modules = {sub: SUBCOMMANDS[sub] for sub in ("recommend", "evaluate", "serve", "tune")}  # with OPTIONS
    if name.startswith("bench "):
        from recbole_ssm.bench.cli import COMMANDS

        if name[6:] not in COMMANDS or name == "bench ops":
            return None
        modules[name] = COMMANDS[name[6:]]
    if name not in modules:
        return frozenset()
    own = set(importlib.import_module(modules[name]).OPTIONS) | {"help"}
    return frozenset(own if name in NO_SETTINGS else own | settings)


def unknown_options(path: str) -> list[str]:
    bad = []
    for number, name, options in shown_commands(path):
        ok = accepted(name)
        if ok is None:
            continue
        for option in options:
            key = option[2:].split("=", 1)[0]
            if key not in ok:
                bad.append(f"{os.path.relpath(path, ROOT)}:{number}: {name or 'train'} {option}")
    return bad


def test_a_shown_command_with_an_unknown_option_is_found(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\npython run_recbole_ssm.py --model=Mamba2Rec --epochs=3\n"
                    "python run_recbole_ssm.py recommend --checkpoint=x.pth --users=all --top=5\n"
                    "python run_recbole_ssm.py bench table --models=SASRec \\\n    --sedes=3\n```\n"
                    "python run_recbole_ssm.py --not-in-a-block\n")
    assert [b.split(": ", 1)[1] for b in unknown_options(str(page))] == ["recommend --top=5", "bench table --sedes=3"]


@pytest.mark.parametrize("path", SHOWN, ids=[os.path.relpath(p, ROOT) for p in SHOWN])
def test_shown_commands_take_their_options(path):
    assert unknown_options(path) == []
