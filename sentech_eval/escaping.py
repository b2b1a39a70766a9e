"""Text from a server or a dataset is data: one escaping rule per output format it goes into.

- ``terminal_text``: control characters (ESC, BEL, NUL, CR, newline, C1 codes, DEL) and the bidi
  overrides are shown escaped (``\\x1b``), so no answer can retitle, clear or recolour a terminal.
- ``markdown_text``: one line of inline markdown: whitespace runs (newlines too) become one space,
  ``|`` and ``\\`` are backslash-escaped (a row cannot split), a leading ``#``/``>``/``-``/``+``/``=``/
  ``1.`` cannot start a block (no injected heading), HTML cannot be injected (``<`` is ``&lt;``);
  control characters as for the terminal (the markdown is printed there too).
- ``xml_text``: what XML 1.0 cannot hold (NUL and other C0 controls, lone surrogates, U+FFFE/U+FFFF)
  is dropped; ElementTree escapes ``&``, ``<`` and quotes itself.
- ``html_text``: ``html.escape`` (quotes included).

Plot labels are never parsed as maths: ``render/plots.py`` turns matplotlib's mathtext off.
This module imports nothing of ours.
"""

from __future__ import annotations

import html
import re

# C0 controls, DEL, C1 controls, and the Unicode line/paragraph separators and bidi controls.
_TERMINAL_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_WHITESPACE = re.compile(r"[\s\u2028\u2029\x85]+")
_MARKDOWN_SPECIAL = re.compile(r"[\\|<]")
_BLOCK_START = re.compile(r"^(\s*)(#|>|[-+*=~](?=\s|$)|\d+[.)](?=\s|$))")  # a heading, quote, list or rule
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _shown(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def terminal_text(text: object) -> str:
    """``text`` safe to print on a terminal: every control character shown escaped (``\\x1b``, ``\\n``)."""
    value = str(text)
    return _TERMINAL_UNSAFE.sub(_shown, value) if _TERMINAL_UNSAFE.search(value) else value


def terminal_lines(text: object) -> str:
    """Like ``terminal_text`` but keeps line breaks (for multi-line output we write ourselves)."""
    return "\n".join(terminal_text(line) for line in str(text).split("\n"))


def markdown_text(text: object) -> str:
    """``text`` as one line of inline markdown (a table cell, a list item, a heading's words)."""
    value = _WHITESPACE.sub(" ", str(text)).strip()
    value = _MARKDOWN_SPECIAL.sub(lambda m: "&lt;" if m.group(0) == "<" else "\\" + m.group(0), value)
    value = _BLOCK_START.sub(
        lambda m: (
            m.group(1) + (m.group(2)[:-1] + "\\" + m.group(2)[-1] if m.group(2)[0].isdigit() else "\\" + m.group(2))
        ),
        value,
    )
    return terminal_text(value)


def xml_text(text: object) -> str:
    """``text`` with what XML 1.0 cannot hold dropped (ElementTree escapes the rest)."""
    value = str(text)
    return _XML_UNSAFE.sub("", value) if _XML_UNSAFE.search(value) else value


def html_text(text: object) -> str:
    """``text`` for an HTML element or attribute."""
    return html.escape(str(text), quote=True)
