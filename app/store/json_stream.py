"""Reading the top-level lists of a big JSON object one item at a time.

A COCO file of 50,000 images is tens of MB of JSON and several hundred MB as Python
objects; `iter_section` walks the top-level object with the standard decoder's
`raw_decode`, one value at a time, over a text buffer refilled in CHUNK_CHARS pieces,
so memory holds one item (plus one chunk) whatever the file's size. Keys other than
the wanted one are parsed and dropped. A value that ends exactly at the end of the
buffer is parsed again with more text, since "12" may be the start of "123".
"""
from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

CHUNK_CHARS = 1 << 20
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class JsonStreamError(ValueError):
    """Invalid JSON or an unexpected shape; the message names the file and the position."""


class _Reader:
    def __init__(self, stream: BinaryIO, label: str):
        self.stream, self.label = stream, label
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buffer, self.pos, self.eof = "", 0, False
        self.dropped_chars, self.dropped_lines, self.last_line_start = 0, 0, 0  # text already discarded

    def _more(self) -> bool:
        """Append the next chunk (dropping what was consumed); False at the end of the file."""
        if self.eof:
            return False
        raw = self.stream.read(CHUNK_CHARS)
        try:
            text = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as error:
            raise JsonStreamError(f"{self.label} is not UTF-8 text (near byte {error.start})") from None
        consumed = self.buffer[: self.pos]
        newlines = consumed.count("\n")
        if newlines:
            self.last_line_start = self.dropped_chars + consumed.rindex("\n") + 1
        self.dropped_lines += newlines
        self.dropped_chars += self.pos
        self.buffer, self.pos = self.buffer[self.pos :] + text, 0
        self.eof = not raw
        return bool(text) or not self.eof

    def where(self, position: int) -> str:
        """'line L column C (char N)' of a buffer position, counted over the whole file."""
        before = self.buffer[:position]
        line = self.dropped_lines + before.count("\n") + 1
        absolute = self.dropped_chars + position
        line_start = self.dropped_chars + before.rindex("\n") + 1 if "\n" in before else self.last_line_start
        return f"line {line} column {absolute - line_start + 1} (char {absolute})"

    def fail(self, message: str, position: int | None = None) -> JsonStreamError:
        return JsonStreamError(f"{self.label} is not valid JSON: {message} at {self.where(self.pos if position is None else position)}")

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the file), not consumed."""
        while True:
            self.pos = _WHITESPACE.match(self.buffer, self.pos).end()
            if self.pos < len(self.buffer) or not self._more():
                return self.buffer[self.pos : self.pos + 1]

    def take(self, expected: str) -> None:
        if self.peek() != expected:
            found = self.buffer[self.pos : self.pos + 1]
            raise self.fail(f"Expecting '{expected}'" if found else f"Expecting '{expected}', found the end of the file")
        self.pos += 1

    def value(self) -> Any:
        """The next complete JSON value."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as error:
                incomplete = error.pos >= len(self.buffer) - 1 or error.msg.startswith("Unterminated")
                if incomplete and self._more():
                    continue
                raise self.fail(error.msg, error.pos) from None
            if end == len(self.buffer) and self._more():
                continue
            self.pos = end
            return value


def _items(reader: _Reader) -> Iterator[Any]:
    reader.take("[")
    if reader.peek() == "]":
        reader.pos += 1
        return
    while True:
        yield reader.value()
        if reader.peek() == ",":
            reader.pos += 1
            continue
        reader.take("]")
        return


def iter_sections(
    open_stream: Callable[[], BinaryIO], label: str, keys: tuple[str, ...], required: tuple[str, ...] = ()
) -> Iterator[tuple[str, Any]]:
    """(key, item) for every item of the top-level lists named in `keys`, in file order.

    JsonStreamError for invalid JSON, a top level that is not an object, a wanted key
    that is not a list, or a `required` key that is absent. The whole file is read, so
    errors after the lists surface too.
    """
    found = set()
    with open_stream() as stream:
        reader = _Reader(stream, label)
        if reader.peek() != "{":
            raise JsonStreamError(f"{label} is not a COCO file: expected a JSON object")
        reader.take("{")
        while reader.peek() != "}":
            name = reader.value()
            if not isinstance(name, str):
                raise reader.fail("Expecting property name enclosed in double quotes")
            reader.take(":")
            is_list = reader.peek() == "["
            if name in keys:
                if not is_list:
                    raise JsonStreamError(f"{label}: '{name}' must be a list")
                found.add(name)
                for item in _items(reader):
                    yield name, item
            elif is_list:
                for _ in _items(reader):
                    pass
            else:
                reader.value()
            if reader.peek() == ",":
                reader.pos += 1
            elif reader.peek() != "}":
                raise reader.fail("Expecting ',' delimiter")
        reader.take("}")
        if reader.peek():
            raise reader.fail("Extra data")
    for key in required:
        if key not in found:
            raise JsonStreamError(f"{label} is not a COCO file: expected an object with an '{key}' list")


def iter_section(open_stream: Callable[[], BinaryIO], label: str, key: str) -> Iterator[Any]:
    """The items of the top-level list `key`, one at a time (see iter_sections)."""
    for _, item in iter_sections(open_stream, label, (key,)):
        yield item
