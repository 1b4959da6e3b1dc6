"""Every relative link of README.md and docs/**/*.md resolves: files, images and #anchors.

Links must work in both places the pages are read: on GitHub (README.md and docs/ as files) and in
the mkdocs site (docs/ only, ``make docs``). So a link from a page under docs/ must stay inside
docs/ (mkdocs cannot serve ``../configs/x.yaml``; write such paths as code spans instead), and an
anchor into a page under docs/ must name a heading under both GitHub's and Python-Markdown's
slug rules. Code spans and fenced code blocks are not Markdown, so brackets in them are ignored.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])

FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_ATTR = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']+)[\"']", re.I)
ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, //host


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line with code spans blanked) for every line outside fenced code blocks."""
    out, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        if m:
            fence = m.group(1)
            continue
        out.append((n, CODE_SPAN.sub(lambda s: " " * len(s.group(0)), line)))
    return out


def _heading_texts(text: str) -> list[str]:
    """The text of every ATX and setext heading outside fenced code, inline markup removed."""
    lines = _prose_lines(text)
    raw = text.splitlines()
    heads = []
    for i, (n, _) in enumerate(lines):
        line = raw[n - 1]  # keep code spans: their text is part of the heading
        m = ATX.match(line)
        if m:
            heads.append(m.group(2))
        elif (
            i + 1 < len(lines)
            and lines[i + 1][0] == n + 1
            and line.strip()
            and not line.lstrip().startswith(("|", "-", "*", ">"))
            and re.fullmatch(r"\s{0,3}(=+|-+)\s*", raw[n])
        ):
            heads.append(line.strip())
    plain = []
    for h in heads:
        h = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", h)  # [text](url) -> text
        h = re.sub(r"<[^>]+>", "", h)  # inline HTML
        h = re.sub(r"(`+)(.+?)\1", r"\2", h)  # code spans keep their text
        h = re.sub(r"(\*\*|__|\*|_)(\S(?:.*?\S)?)\1", r"\2", h)  # emphasis
        plain.append(h.strip())
    return plain


def _github_slug(text: str) -> str:
    text = text.lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def _mkdocs_slug(text: str) -> str:
    # Python-Markdown's toc.slugify (mkdocs' default): ASCII only, runs of spaces/hyphens -> "-".
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(text: str, slug, sep: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for h in _heading_texts(text):
        s = slug(h)
        if s in seen:
            seen[s] += 1
            out.add(f"{s}{sep}{seen[s]}")
        else:
            seen[s] = 0
            out.add(s)
    return out


def _links(page: Path) -> list[tuple[int, str]]:
    found = []
    for n, line in _prose_lines(page.read_text(encoding="utf-8")):
        targets = [m.group(1) for m in INLINE_LINK.finditer(line)]
        targets += [m.group(1) for m in REF_DEF.finditer(line)]
        targets += [m.group(1) for m in HTML_ATTR.finditer(line)]
        found += [(n, t.strip("<>")) for t in targets]
    return found


def _problems(page: Path, root: Path = ROOT, docs: Path = DOCS) -> list[str]:
    problems = []
    rel = page.relative_to(root)
    in_docs = docs in page.parents
    for n, target in _links(page):
        where = f"{rel}:{n}: ({target})"
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        if path_part.startswith("/"):
            problems.append(f"{where} absolute path: use a path relative to the page")
            continue
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(
                f"{where} no such file {dest.relative_to(root) if root in dest.parents else dest}"
            )
            continue
        if in_docs and docs not in dest.parents:
            problems.append(
                f"{where} leaves docs/: the mkdocs site cannot serve it; write the path as a code span"
            )
            continue
        if anchor and dest.suffix == ".md":
            text = dest.read_text(encoding="utf-8")
            flavours = {"GitHub": _anchors(text, _github_slug, "-")}
            if docs in dest.parents:
                flavours["mkdocs"] = _anchors(text, _mkdocs_slug, "_")
            missing = [name for name, anchors in flavours.items() if anchor not in anchors]
            if missing:
                problems.append(f"{where} no heading with anchor #{anchor} ({' and '.join(missing)} slugs)")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    problems = _problems(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_link_checker_sees_links_and_skips_code(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A heading: with `code`\n\n## Same — dash\n\n"
        "[ok](#a-heading-with-code) ![img](pic.png) [gone](missing.md) [ext](https://example.org)\n"
        "`[not](a-link.md)` and [bad anchor](#nope)\n\n```\n[not](in-a-fence.md)\n```\n"
        '<img src="other.png">\n\n[ref]: missing-ref.md\n',
        encoding="utf-8",
    )
    (tmp_path / "pic.png").write_bytes(b"")
    targets = [t for _, t in _links(page)]
    assert targets == [
        "#a-heading-with-code",
        "pic.png",
        "missing.md",
        "https://example.org",
        "#nope",
        "other.png",
        "missing-ref.md",
    ]
    text = page.read_text(encoding="utf-8")
    assert _anchors(text, _github_slug, "-") == {"a-heading-with-code", "same--dash"}
    assert _anchors(text, _mkdocs_slug, "_") == {"a-heading-with-code", "same-dash"}

    # The same page under a docs/ folder: broken targets, an anchor only one flavour knows, escapes.
    docs = tmp_path / "docs"
    docs.mkdir()
    (tmp_path / "configs.yaml").write_text("", encoding="utf-8")
    inner = docs / "inner.md"
    inner.write_text(
        text + "[up](../configs.yaml) [dash](page.md#same--dash) [self](#same-dash)\n", encoding="utf-8"
    )
    (docs / "page.md").write_text(text, encoding="utf-8")
    (docs / "pic.png").write_bytes(b"")
    problems = _problems(inner, root=tmp_path, docs=docs)
    assert len(problems) == 7, problems
    for expected in (
        "no such file docs/missing.md",
        "#nope",
        "other.png",
        "missing-ref.md",
        "leaves docs/",
        "#same--dash (mkdocs slugs)",
        "#same-dash (GitHub slugs)",
    ):
        assert any(expected in p for p in problems), (expected, problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pointer_to_a_spec_folder_users_do_not_have(page: Path) -> None:
    hits = [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()}"
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"(?:\.\./|\b)shared/", line)
    ]
    assert not hits, "the development spec folder is not part of the repository:\n" + "\n".join(hits)
