"""A page's text as a person reads it, for assertions on what a page says."""

import html
import re

_WORD_BREAK = re.compile(r"<wbr\s*/?>")
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def visible_text(page) -> str:
    """The text of `page` (a response or an HTML string): tags removed, entities decoded,
    whitespace collapsed. A word-break opportunity (<wbr>, inside e-mail addresses) joins
    what it splits; every other tag separates words."""
    markup = page if isinstance(page, str) else page.get_data(as_text=True)
    without_tags = _TAG.sub(" ", _WORD_BREAK.sub("", markup))
    return _SPACE.sub(" ", html.unescape(without_tags)).strip()
