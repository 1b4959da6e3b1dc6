"""A report page parsed with the standard library: images, links, tables (cell text and
attributes), scripts and the page text — what the report tests check."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path


@dataclass
class Cell:
    text: str
    attrs: dict[str, str]
    items: list[str] = field(default_factory=list)  # the texts of its <li> elements


@dataclass
class Table:
    attrs: dict[str, str]
    rows: list[list[Cell]] = field(default_factory=list)

    def row(self, first: str) -> list[Cell]:
        return next(r for r in self.rows if r and r[0].text == first)


class Page(HTMLParser):
    def __init__(self, path: Path) -> None:
        super().__init__(convert_charrefs=True)
        self.path = Path(path)
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []  # every href and src
        self.scripts = 0
        self.tables: list[Table] = []
        self.texts: list[str] = []
        self._cell: Cell | None = None
        self.raw = self.path.read_text(encoding="utf-8")
        self.feed(self.raw)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.urls += [a[k] for k in ("href", "src") if k in a]
        if tag == "img":
            self.images.append(a)
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self.tables.append(Table(a))
        elif tag == "tr" and self.tables:
            self.tables[-1].rows.append([])
        elif tag in ("td", "th") and self.tables:
            self._cell = Cell("", a)
            self.tables[-1].rows[-1].append(self._cell)
        elif tag == "li" and self._cell is not None:
            self._cell.items.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self._cell.text = self._cell.text.strip()
            self._cell = None

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._cell is not None:
            self._cell.text += data
            if self._cell.items:
                self._cell.items[-1] += data

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def tables_of(self, cls: str) -> list[Table]:
        return [t for t in self.tables if t.attrs.get("class") == cls]
