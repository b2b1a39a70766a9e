"""The one text normaliser: what "the same answer" means for ``exact_match``, ``contains``,
``token_f1``, ``regex`` and for output agreement in ``compare``.

Unicode NFKC, case-folded, punctuation *and symbols* replaced by spaces, whitespace collapsed.
Symbols are not part of an answer: "$5", "5 $" and "5" are the same answer, as are "Paris!" and
"paris". Every comparison of answers goes through this one function.

``one_line`` is the one way a text is shortened for a message or a table cell.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

_SPACE = re.compile(r"\s+")


def normalize_text(text: Any) -> str:
    """Case-folded text without punctuation or symbols, single-spaced (``None`` -> ``""``)."""
    if text is None:
        return ""
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return _SPACE.sub(" ", text).strip()


def one_line(text: Any, limit: int) -> str:
    """``text`` on one line (whitespace collapsed, ``None`` -> ``""``), cut to ``limit`` characters with "…"."""
    text = " ".join(("" if text is None else str(text)).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
