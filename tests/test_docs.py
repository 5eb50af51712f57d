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
