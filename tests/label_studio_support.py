"""Test helpers for the Label Studio ML backend: a decoder of Label Studio's brush RLE (written from
the format's description in app/label_studio_rle.py, the way Label Studio's front end reads it)
and a stand-in Label Studio that serves task images only to its API token."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def decode_brush_rle(rle: list[int]) -> np.ndarray:
    """Label Studio brush `rle` -> the flat value array it encodes (RGBA of every pixel)."""
    bits = "".join(f"{byte:08b}" for byte in rle)
    position = 0

    def read(count: int) -> int:
        nonlocal position
        value = int(bits[position:position + count], 2)
        position += count
        return value

    total, word = read(32), read(5) + 1
    fields = [read(4) + 1 for _ in range(4)]
    out = np.zeros(total, dtype=np.uint32)
    index = 0
    while index < total:
        repeated = read(1)
        end = index + 1 + read(fields[read(2)])
        if repeated:
            out[index:end] = read(word)
        else:
            for cell in range(index, end):
                out[cell] = read(word)
        index = end
    return out


def brush_mask(rle: list[int], width: int, height: int) -> np.ndarray:
    """The mask (alpha channel > 0) of a brush region of a width x height task."""
    return decode_brush_rle(rle).reshape(height, width, 4)[:, :, 3] > 0


def start_label_studio_stub(files: dict[str, bytes], token: str) -> tuple[str, ThreadingHTTPServer, list[str]]:
    """Serve `files` (url path -> bytes) to requests carrying `Authorization: Token <token>`, 401 otherwise;
    returns (base url, server, the paths asked for)."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            asked.append(self.path)
            authorised = self.headers.get("Authorization") == f"Token {token}"
            body = files.get(self.path) if authorised else None
            self.send_response(200 if body is not None else (404 if authorised else 401))
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server, asked
