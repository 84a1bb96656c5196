"""Text quoted in log lines and error messages, bounded.

An answer's ``msg``, an exception's text or a URL can be a megabyte long: whoever quotes one
(the transport, the writer, the spool, the commands) cuts it to ``MESSAGE_CHARS`` here, so a
1 MB ``msg`` is not logged a million characters at a time.
"""

from __future__ import annotations

from typing import Final

#: The most characters of an answer's ``msg`` or an exception's text any log line quotes.
MESSAGE_CHARS: Final = 200


def shown(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"
