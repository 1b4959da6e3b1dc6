"""Griffe extension for the API reference (mkdocs.yml): Sphinx roles in docstrings become links.

The docstrings are Google style with Sphinx cross-reference roles (``:func:`clip_loss```,
``:class:`~contrastkit.data.PairSet```). Markdown would show those as ":func:" followed by code;
this turns each into the code span of the name, linked to the object's entry when the name
resolves in the docstring's scope and that object is rendered. The link is an *optional*
cross-reference: a name that is not rendered (private, external) stays plain code without a
warning, so ``mkdocs build --strict`` never fails because of a role.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|data|mod|attr|exc|obj|const):`(~?)([A-Za-z_][\w.]*)(?:\(\))?`"
)


def _identifier(obj: griffe.Object, name: str) -> str:
    if name.startswith("contrastkit"):
        return name
    head, _, rest = name.partition(".")
    try:
        path = obj.resolve(head)
    except Exception:  # unknown in this scope: leave the name as written
        return name
    return f"{path}.{rest}" if rest else path


def _link(obj: griffe.Object, match: re.Match[str]) -> str:
    tilde, name = match.groups()
    shown = name.rsplit(".", 1)[-1] if tilde else name
    ident = html.escape(_identifier(obj, name), quote=True)
    return f'<autoref identifier="{ident}" optional><code>{html.escape(shown)}</code></autoref>'


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.docstring is not None and ":`" in obj.docstring.value:
                obj.docstring.value = ROLE.sub(lambda m, o=obj: _link(o, m), obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
