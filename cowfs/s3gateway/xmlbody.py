"""S3's XML: the response bodies the gateway writes and the request bodies it reads."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from urllib.parse import quote
from xml.sax.saxutils import escape

from cowfs.s3gateway.errors import S3Error

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
#: S3's own limit on the keys of one DeleteObjects request.
MAX_DELETE_KEYS = 1000
HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'


def el(tag: str, value: object) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{tag}>{escape(str(value))}</{tag}>"


def document(root: str, *parts: str) -> bytes:
    return (HEADER + f'<{root} xmlns="{NS}">' + "".join(parts) + f"</{root}>").encode()


def error_body(code: str, message: str, resource: str, request_id: str) -> bytes:
    body = el("Code", code) + el("Message", message) + el("Resource", resource)
    return (HEADER + "<Error>" + body + el("RequestId", request_id) + "</Error>").encode()


def url_key(key: str, encode: bool) -> str:
    return quote(key, safe="/") if encode else key


def _parse(body: bytes, root: str) -> ET.Element:
    try:
        tree = ET.fromstring(body)
    except ET.ParseError as e:
        raise S3Error("MalformedXML", f"the XML body does not parse: {e}") from None
    for node in tree.iter():
        node.tag = node.tag.rpartition("}")[2]
    if tree.tag != root:
        raise S3Error("MalformedXML", f"the XML body's root must be <{root}>, not <{tree.tag}>")
    return tree


@dataclass(frozen=True)
class DeleteRequest:
    keys: tuple[str, ...]
    quiet: bool


def parse_delete(body: bytes) -> DeleteRequest:
    tree = _parse(body, "Delete")
    keys = []
    for obj in tree.findall("Object"):
        key = obj.findtext("Key")
        if key is None:
            raise S3Error("MalformedXML", "every <Object> of a DeleteObjects body needs a <Key>")
        keys.append(key)
    if not keys:
        raise S3Error("MalformedXML", "DeleteObjects names no <Object>")
    if len(keys) > MAX_DELETE_KEYS:
        raise S3Error(
            "MalformedXML",
            f"DeleteObjects takes at most {MAX_DELETE_KEYS} keys, this one has {len(keys)}",
        )
    quiet = (tree.findtext("Quiet") or "").strip().lower() == "true"
    return DeleteRequest(tuple(keys), quiet)


@dataclass(frozen=True)
class CompletedPart:
    number: int
    etag: str


def parse_complete(body: bytes) -> list[CompletedPart]:
    tree = _parse(body, "CompleteMultipartUpload")
    parts = []
    for p in tree.findall("Part"):
        try:
            number = int(p.findtext("PartNumber") or "")
        except ValueError:
            raise S3Error("MalformedXML", "every <Part> needs a numeric <PartNumber>") from None
        parts.append(CompletedPart(number, (p.findtext("ETag") or "").strip()))
    if not parts:
        raise S3Error("MalformedXML", "CompleteMultipartUpload names no <Part>")
    return parts
