"""The README is the front page: it promises two commands that work on a fresh machine (CI must run the
second one verbatim), names every command and links every page of docs/; and every relative link in the
README and docs/ leads to a file (and heading) that exists."""

import re
from pathlib import Path

from bigl_sam.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
EXTERNAL = ("http://", "https://", "mailto:")


def readme_commands():
    lines = README.read_text().splitlines()
    return [line.strip() for line in lines if line.startswith("    python3 -m venv")]


def prose_lines(page: Path):
    """The page's lines outside fenced code blocks."""
    fenced = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def links(page: Path):
    """The targets of the page's Markdown links (inline code such as `registry["x"](checkpoint=...)` is none)."""
    return [target for line in prose_lines(page) for target in LINK.findall(re.sub(r"`[^`]*`", "", line))]


def anchors(page: Path):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen = {}
    for line in prose_lines(page):
        heading = re.match(r"#{1,6} (.*)", line)
        if heading:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            seen[slug] = seen.get(slug, -1) + 1
            yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def test_readme_has_exactly_two_setup_commands():
    install, tests = readme_commands()
    assert install.endswith("bigl-sam demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_commands()[1] in ci_lines


def test_readme_commands_table_names_every_command_once():
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `bigl-sam ")]
    named = [row.split("`")[1].split()[1] for row in rows]
    assert sorted(named) == sorted(COMMANDS)


def test_readme_links_every_docs_page():
    linked = {target.partition("#")[0] for target in links(README)}
    missing = [page.name for page in PAGES[1:] if f"docs/{page.name}" not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in links(page):
            if target.startswith(EXTERNAL):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path) if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in set(anchors(linked)):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
