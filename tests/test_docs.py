"""The docs stay true to the tree: every file path docs/structures.md names exists, and every link in the
README, docs/ and benchmarks/README.md resolves (relative targets exist, `#anchors` match a heading)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = ROOT / "docs" / "structures.md"
DOCS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A code span that names a file or folder of the repository: a top-level folder, then a path.
PATH_SPAN = re.compile(r"`((?:proto|chameleon|router|shard|tests|docker|benchmarks|docs)/[\w./-]*)`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
STEP = re.compile(r"^(\d+)\. \*\*", re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    """The anchors of a Markdown file's headings (outside code blocks), duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    fenced = False
    for line in md.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^#{1,6} (.+)$", line)
        if m:
            slug = _slug(m.group(1))
            out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return out


def links(md: Path) -> list[str]:
    """Link targets of a Markdown file, outside code blocks."""
    text = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.M | re.S)
    return LINK.findall(text)


def test_structure_document_names_only_existing_files() -> None:
    named = set(PATH_SPAN.findall(STRUCTURES.read_text()))
    assert len(named) >= 30, sorted(named)  # the request's life and the package list are there
    missing = sorted(p for p in named if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"docs/structures.md names paths that do not exist: {missing}"


def test_request_life_has_eight_to_ten_steps_each_naming_a_file() -> None:
    text = STRUCTURES.read_text()
    life = text[text.index("## A request's life"):text.index("## Packages and folders")]
    steps = re.split(r"^\d+\. ", life, flags=re.M)[1:]
    assert 8 <= len(steps) <= 10
    assert [int(n) for n in STEP.findall(life)] == list(range(1, len(steps) + 1))
    for step in steps:
        assert PATH_SPAN.search(step), f"a step names no file: {step[:80]}"


def test_readme_layout_points_to_the_structure_document() -> None:
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):readme.index("## Command line")]
    assert "](docs/structures.md)" in layout


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(md: Path) -> None:
    broken = []
    for target in links(md):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{md.relative_to(ROOT)}: {broken}"


def test_slugs_match_github() -> None:
    assert _slug("Shard model (`shard/model/`, `shard/lora/`)") == "shard-model-shardmodel-shardlora"
    assert _slug("Latest results (this machine)") == "latest-results-this-machine"
    assert _slug("`chameleon launch`") == "chameleon-launch"
