"""One escaping rule per output format (sentech_eval/escaping.py): server and dataset text is data."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from sentech_eval.escaping import html_text, markdown_text, terminal_lines, terminal_text, xml_text

HOSTILE = [
    "m\x00odel",
    "\x1b[31mred\x1b[0m",
    "title\x1b]0;pwned\x07",
    "clear\x1b[2J\x1bc",
    "line\n## injected",
    "row\r\n| x | y |",
    "a|b",
    "<script>alert(1)</script>",
    "# heading",
    "> quote",
    "- item",
    "1. item",
    "back\\",
    "bidi\u202eevil",
    "sep\u2028x",
    "c1\x9b31m",
    "lone\ud800surrogate",
    "\ufffe",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_terminal_text_shows_every_control_character_escaped(text):
    shown = terminal_text(text)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u202e\u2028" for c in shown)
    assert terminal_text("plain text, é ü 中文 ✓") == "plain text, é ü 中文 ✓"


def test_terminal_lines_keeps_our_line_breaks_only():
    assert terminal_lines("one\ntwo\x1b[2J") == "one\ntwo\\x1b[2J"


@pytest.mark.parametrize("text", HOSTILE)
def test_markdown_text_is_one_inline_line_that_starts_no_block(text):
    cell = markdown_text(text)
    assert "\n" not in cell and "\r" not in cell and "<" not in cell
    assert not cell.startswith(("#", ">", "- ", "1.")), cell
    row = f"| {cell} | 1 |"
    # every '|' of the text is escaped: the row keeps exactly its own three delimiters
    assert row.replace("\\\\", "").replace("\\|", "").count("|") == 3, row


@pytest.mark.parametrize("text", HOSTILE)
def test_xml_text_makes_xml_that_parses_back(text):
    element = ET.Element("testcase", name=xml_text(text))
    element.text = xml_text(text)
    ET.fromstring(ET.tostring(element, encoding="unicode"))


def test_html_text_escapes_markup_and_quotes():
    assert html_text('<a href="x">&') == "&lt;a href=&quot;x&quot;&gt;&amp;"
