"""The docs hold together: every relative link in README.md, docs/*.md and bench/README.md points at a
file that exists (and at a heading that exists, for `#anchor` links), every `recipes/<name>.yaml`
they mention exists, and the README fits on a page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RECIPE = re.compile(r"recipes/[\w.+-]+\.yaml")


def prose(path: Path) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (hyphens kept), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(path).splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            base = slug(m.group(1))
            n = sum(1 for a in found if a == base or re.fullmatch(rf"{re.escape(base)}-\d+", a))
            found.add(f"{base}-{n}" if n else base)  # GitHub numbers repeated headings: x, x-1, x-2
    return found


def bad_links(page: Path) -> list[str]:
    bad = []
    for target in LINK.findall(re.sub(r"`[^`\n]*`", "", prose(page))):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            bad.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            bad.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor} in {file.relative_to(ROOT)})")
    return bad


def test_every_relative_link_resolves():
    bad = [b for page in PAGES for b in bad_links(page)]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_every_recipe_mentioned_exists():
    named = {(page, r) for page in PAGES for r in RECIPE.findall(page.read_text(encoding="utf-8"))}
    missing = sorted(f"{page.relative_to(ROOT)}: {r}" for page, r in named if not (ROOT / r).is_file())
    assert not missing, "recipes named in the docs but not in recipes/:\n" + "\n".join(missing)


def test_the_readme_fits_on_a_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 220, f"README.md has {lines} lines; keep it at most 220 (move reference to docs/)"


def test_slugs_follow_github():
    assert slug("The full-size recipe: `recipes/fedlora.yaml`") == "the-full-size-recipe-recipesfedlorayaml"
    assert slug("Clients: on ranks, of several ranks") == "clients-on-ranks-of-several-ranks"
