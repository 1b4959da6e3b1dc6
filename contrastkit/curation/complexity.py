"""S-CAT (complexity part) — caption complexity by a fixed word-list heuristic, no parser, no model.

DiHT (Radenovic et al. 2023, "Filtering, Distillation, and Hard Negatives for Vision-Language
Pre-Training") keeps a pair only if its caption is *complex*: parsed into a scene graph, it has
enough objects, attributes and relations. contrastkit replaces the parser with a rule anyone can
recompute by hand, the same on every machine:

1. lower-case the caption; tokens are the maximal runs of letters or of digits
   (``"a dog's 2 toys"`` → ``a, dog, s, 2, toys``);
2. relation phrases of several words (:data:`RELATION_PHRASES`, longest first, e.g.
   ``to the left of``, ``in front of``, ``next to``) each count as **one relation** and their
   tokens are consumed;
3. every remaining token, in this order of precedence:

   * in :data:`STOPWORDS` (articles, pronouns, auxiliaries, conjunctions, ``of``/``for``/``from``,
     words about the picture itself such as ``photo`` or ``image``) → ignored;
   * in :data:`RELATION_WORDS` (spatial prepositions, common verbs) → a **relation**;
   * in :data:`ATTRIBUTE_WORDS` (colours, sizes, materials, textures, states, number words) or
     all digits → an **attribute**;
   * ending in ``ing``, at least 5 letters, not in :data:`ING_NOUNS` → a **relation** (a verb:
     ``riding``, ``holding``);
   * anything else → an **object**;

4. complexity ``C = objects + attributes + relations`` (occurrences, not distinct words: "a red
   circle and a red square" has two attributes).

Examples: ``"a small purple circle"`` → 1 object, 2 attributes, 0 relations, C = 3;
``"a blue triangle below a yellow circle"`` → 2 + 2 + 1 = 5; ``"there is a cyan star in the
center"`` → objects star, center; attribute cyan; relation in; C = 4.

Known errors of the heuristic (the price of having no parser): a verb that is not listed and does
not end in ``ing`` (``sits`` is listed, ``jumps`` is not) counts as an object; a word with several
roles gets its list's role (``orange`` is always a colour). The CAT filter's other two rules are
not here: the *action* rule is approximated by ``min_relations`` of the ``complexity`` filter, and
text spotting needs an OCR model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "ATTRIBUTE_WORDS",
    "ING_NOUNS",
    "RELATION_PHRASES",
    "RELATION_WORDS",
    "STOPWORDS",
    "CaptionComplexity",
    "caption_complexity",
]

STOPWORDS = frozenset(
    """
    a an the this that these those some any each every all both another other such no not
    i me my you your he him his she her it its we us our they them their there here one ones
    is are was were be been being am has have had do does did can could will would shall should
    may might must and or but nor so yet as than then also too very quite really just only
    of for from to about via per while what which who whom whose where when why how if
    s t photo photograph picture image pic view shot closeup illustration stock showing
    depicting featuring seen shown close up down
    """.split()
)
"""Ignored tokens: function words and words about the picture rather than its content."""

RELATION_PHRASES = (
    "to the left of",
    "to the right of",
    "on the left of",
    "on the right of",
    "in front of",
    "on top of",
    "in the middle of",
    "at the top of",
    "at the bottom of",
    "next to",
    "close to",
    "left of",
    "right of",
    "out of",
    "away from",
)
"""Multi-word relations, each one relation (matched longest first, before single tokens)."""

RELATION_WORDS = frozenset(
    """
    on in at inside into onto over under underneath beneath above below behind beside between
    among near by across along around through against toward towards with without within
    outside off upon atop
    sits sit sat stands stand stood lies lie lay holds hold held wears wear wore rides ride rode
    eats eat ate plays play played looks look walks walk runs run flies fly carries carry uses
    use watches watch covered filled parked made topped surrounded
    """.split()
)
"""Single-token relations: spatial prepositions and common caption verbs."""

ATTRIBUTE_WORDS = frozenset(
    """
    red green blue yellow orange purple pink brown black white gray grey cyan magenta violet
    beige gold golden silver dark light bright pale colorful colourful
    small large big tiny little huge tall short long wide narrow thick thin giant massive
    round square rectangular triangular flat curved straight
    wooden metal metallic plastic glass stone leather paper cotton steel concrete
    striped spotted checkered plaid furry fluffy shiny smooth rough soft hard
    old young new empty full open closed wet dry clean dirty broken hot cold warm fresh
    happy sad beautiful pretty cute ugly modern vintage
    two three four five six seven eight nine ten eleven twelve several many few multiple
    first second third single double
    """.split()
)
"""Attribute tokens (digits count too): colours, sizes, materials, textures, states, numbers."""

ING_NOUNS = frozenset(
    """
    building buildings ceiling clothing painting paintings evening morning king ring rings thing
    things something nothing anything everything string wedding pudding spring wing wings
    sibling icing awning earring earrings bedding railing railings sing ping
    """.split()
)
"""Words ending in ``ing`` that are nouns (objects), not verbs."""

_TOKEN = re.compile(r"[a-z]+|[0-9]+")
_PHRASES = sorted((tuple(p.split()) for p in RELATION_PHRASES), key=len, reverse=True)


@dataclass(frozen=True)
class CaptionComplexity:
    """Counts of one caption; ``total`` = objects + attributes + relations (the complexity C)."""

    objects: int
    attributes: int
    relations: int

    @property
    def total(self) -> int:
        return self.objects + self.attributes + self.relations


def _role(token: str) -> str | None:
    if token in STOPWORDS:
        return None
    if token in RELATION_WORDS:
        return "relations"
    if token in ATTRIBUTE_WORDS or token.isdigit():
        return "attributes"
    if token.endswith("ing") and len(token) >= 5 and token not in ING_NOUNS:
        return "relations"  # a verb in -ing: "riding", "holding"
    return "objects"


def caption_complexity(caption: str) -> CaptionComplexity:
    """Objects, attributes and relations of ``caption`` by the word-list rule of the module
    docstring (S-CAT complexity, DiHT's scene-graph count approximated without a parser)."""
    tokens = _TOKEN.findall(caption.lower())
    counts = {"objects": 0, "attributes": 0, "relations": 0}
    i = 0
    while i < len(tokens):
        phrase = next((p for p in _PHRASES if tuple(tokens[i : i + len(p)]) == p), None)
        if phrase is not None:
            counts["relations"] += 1
            i += len(phrase)
            continue
        role = _role(tokens[i])
        if role is not None:
            counts[role] += 1
        i += 1
    return CaptionComplexity(**counts)
