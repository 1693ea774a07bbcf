"""The README's and docs' relative links lead somewhere: every linked file exists, and every
``#anchor`` into a Markdown file names one of its headings (GitHub's slugs), so a renamed heading
or a moved file cannot leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from repo_paths import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def test_slug_matches_github_on_this_repo_s_headings():
    assert slug("Tri-Level E-ViT (`framework = \"trilevel\"`)") == "tri-level-e-vit-framework--trilevel"
    assert slug("Accuracy: the study (equal steps, 2 seeds)") == "accuracy-the-study-equal-steps-2-seeds"


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(md):
    text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
    dead = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            dead.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dead.append(f"{target} (no heading with that anchor)")
    assert not dead, f"{md.relative_to(REPO)}: dead links: {dead}"
