"""An HTTP answer of the signaling server's API handlers (room API, `/turn/credentials`):
status, content type and body, built without I/O; `server.py` writes it."""

from __future__ import annotations

import attrs

JSON = b"application/json; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"


@attrs.frozen
class Answer:
    """The HTTP answer to one API request."""

    status: int
    content_type: bytes
    body: bytes


def text_answer(status: int, message: str) -> Answer:
    """A plain-text answer, one line, as upstream writes its errors."""
    return Answer(status, TEXT, (message + "\n").encode())
