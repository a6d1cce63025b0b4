"""Decoding `Content-Encoding: aws-chunked` bodies (streaming SigV4 and trailing checksums).

SDKs send uploads this way when they stream: `<hex size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n`
repeated, a zero-size chunk, then optional trailer lines. With a signed stream every chunk's
signature is checked against the previous one, so a body cannot be altered in flight.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from cowfs.s3gateway.errors import S3Error

_MAX_LINE = 4096


class AwsChunkedDecoder:
    def __init__(self, check_signature: Callable[[str, str], str] | None = None, seed: str = ""):
        """`check_signature(previous, chunk_sha256)` gives the expected signature of a chunk."""
        self.check = check_signature
        self.previous = seed
        self.buf = bytearray()
        self.remaining = -1  # bytes of data left in the current chunk; -1: expecting a header
        self.signature = ""
        self.hasher = hashlib.sha256()
        self.done = False
        self.trailers: dict[str, str] = {}

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while True:
            if self.done:
                self._trailers()
                return bytes(out)
            if self.remaining < 0:
                line = self._line()
                if line is None:
                    return bytes(out)
                size, _, ext = line.partition(";")
                try:
                    self.remaining = int(size, 16)
                except ValueError:
                    raise S3Error("IncompleteBody", "malformed aws-chunked body") from None
                self.signature = ext.partition("chunk-signature=")[2].strip()
                if self.remaining == 0:
                    self._verify()
                    self.done = True
                continue
            if self.remaining > 0:
                take = min(self.remaining, len(self.buf))
                if not take:
                    return bytes(out)
                piece = self.buf[:take]
                del self.buf[:take]
                if self.check:
                    self.hasher.update(piece)
                out += piece
                self.remaining -= take
                if self.remaining:
                    return bytes(out)
            if len(self.buf) < 2:
                self.remaining = 0
                return bytes(out)
            if self.buf[:2] != b"\r\n":
                raise S3Error("IncompleteBody", "malformed aws-chunked body (no CRLF after data)")
            del self.buf[:2]
            self._verify()
            self.remaining = -1

    def finish(self) -> None:
        if not self.done:
            raise S3Error("IncompleteBody", "the aws-chunked body ended before its last chunk")

    def _line(self) -> str | None:
        i = self.buf.find(b"\r\n")
        if i < 0:
            if len(self.buf) > _MAX_LINE:
                raise S3Error("IncompleteBody", "malformed aws-chunked body (header too long)")
            return None
        line = self.buf[:i].decode("latin-1")
        del self.buf[: i + 2]
        return line

    def _trailers(self) -> None:
        while (line := self._line()) is not None and line:
            name, _, value = line.partition(":")
            self.trailers[name.strip().lower()] = value.strip()

    def _verify(self) -> None:
        if self.check is None:
            return
        want = self.check(self.previous, self.hasher.hexdigest())
        if not hmac.compare_digest(want, self.signature):
            raise S3Error("SignatureDoesNotMatch", "a chunk's signature does not match")
        self.previous = self.signature
        self.hasher = hashlib.sha256()
