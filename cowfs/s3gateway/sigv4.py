"""AWS Signature Version 4, checked the way S3 checks it: header form and presigned URLs.

Pure functions over a plain `SignedRequest`, so the rules are tested without a server. The
gateway never logs a secret or a signature; a mismatch says which key and which form failed.
"""

from __future__ import annotations

import calendar
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote

from cowfs.awssig import (
    ALGORITHM,
    EMPTY_SHA256,
    Credential,
    sign,
    signing_key,
    string_to_sign,
)
from cowfs.s3gateway.errors import S3Error

UNSIGNED = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_PREFIX = "STREAMING-"
#: S3 refuses requests whose clock is further than this from its own.
MAX_SKEW_S = 15 * 60
#: Longest a presigned URL may live (S3's limit, seven days).
MAX_EXPIRES_S = 7 * 24 * 3600

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=([^,\s]+)\s*,\s*SignedHeaders=([^,\s]+)\s*,\s*"
    r"Signature=([0-9a-f]{64})"
)
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class SignedRequest:
    """What a signature covers: method, the path as sent, decoded query pairs, headers."""

    method: str
    raw_path: str
    query: tuple[tuple[str, str], ...]
    #: Lower-case header names; repeated headers joined with ",".
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Verified:
    """Who signed, and what the body must then be (a SHA-256, unsigned, or signed chunks)."""

    access_key: str
    payload_hash: str
    signature: str
    amz_date: str
    credential: Credential
    signing_key: bytes


def is_signed(req: SignedRequest) -> bool:
    keys = {k for k, _ in req.query}
    return "authorization" in req.headers or bool({"X-Amz-Signature", "AWSAccessKeyId"} & keys)


def aws_quote(text: str, safe: str = "") -> str:
    """URI-encode as SigV4 wants: everything but A-Z a-z 0-9 - _ . ~ (and `safe`)."""
    return quote(text, safe="-_.~" + safe)


def canonical_uri(raw_path: str) -> str:
    return aws_quote(unquote(raw_path), safe="/") or "/"


def canonical_query(pairs: tuple[tuple[str, str], ...]) -> str:
    encoded = sorted((aws_quote(k), aws_quote(v)) for k, v in pairs if k != "X-Amz-Signature")
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_headers(headers: Mapping[str, str], signed: list[str]) -> str:
    lines = []
    for name in signed:
        value = headers.get(name)
        if value is None:
            raise S3Error(
                "SignatureDoesNotMatch", f"signed header {name!r} is missing from the request"
            )
        lines.append(f"{name}:{_SPACES.sub(' ', value.strip())}\n")
    return "".join(lines)


def canonical_request(req: SignedRequest, signed: list[str], payload_hash: str) -> str:
    return "\n".join(
        [
            req.method,
            canonical_uri(req.raw_path),
            canonical_query(req.query),
            canonical_headers(req.headers, signed),
            ";".join(signed),
            payload_hash,
        ]
    )


def chunk_signature(v: Verified, previous: str, chunk_sha256: str) -> str:
    """The signature of one chunk of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body."""
    text = "\n".join(
        [
            "AWS4-HMAC-SHA256-PAYLOAD",
            v.amz_date,
            v.credential.scope,
            previous,
            EMPTY_SHA256,
            chunk_sha256,
        ]
    )
    return sign(v.signing_key, text)


def verify(
    req: SignedRequest, secret_for: Callable[[str], str | None], now: float | None = None
) -> Verified:
    """Check a request's signature (either form); raises `S3Error` saying what is wrong."""
    now = time.time() if now is None else now
    query = dict(req.query)
    if "AWSAccessKeyId" in query:
        raise S3Error("InvalidRequest", "Signature Version 2 is not supported: presign with SigV4")
    if "X-Amz-Signature" in query:
        return _verify_presigned(req, query, secret_for, now)
    auth = req.headers.get("authorization", "")
    m = _AUTH.fullmatch(auth.strip())
    if not m:
        if auth.startswith("AWS "):
            raise S3Error("InvalidRequest", "Signature Version 2 is not supported: use SigV4")
        raise S3Error("AuthorizationHeaderMalformed", "the Authorization header is malformed")
    cred = _credential(m.group(1))
    signed = m.group(2).split(";")
    amz_date = req.headers.get("x-amz-date", "")
    _check_date(amz_date, cred, now, presigned=False)
    payload_hash = req.headers.get("x-amz-content-sha256")
    if not payload_hash:
        raise S3Error("InvalidRequest", "missing x-amz-content-sha256 (SigV4 for S3 needs it)")
    return _check(req, secret_for, cred, signed, amz_date, payload_hash, m.group(3))


def _verify_presigned(
    req: SignedRequest,
    query: dict[str, str],
    secret_for: Callable[[str], str | None],
    now: float,
) -> Verified:
    if query.get("X-Amz-Algorithm") != ALGORITHM:
        raise S3Error("AuthorizationQueryParametersError", "X-Amz-Algorithm must be " + ALGORITHM)
    try:
        cred = _credential(query["X-Amz-Credential"])
        signed = query["X-Amz-SignedHeaders"].split(";")
        amz_date = query["X-Amz-Date"]
        expires = int(query["X-Amz-Expires"])
    except (KeyError, ValueError):
        raise S3Error(
            "AuthorizationQueryParametersError",
            "a presigned URL needs X-Amz-Credential, -Date, -Expires and -SignedHeaders",
        ) from None
    if not 0 < expires <= MAX_EXPIRES_S:
        raise S3Error(
            "AuthorizationQueryParametersError", "X-Amz-Expires must be 1 to 604800 seconds"
        )
    signed_at = _check_date(amz_date, cred, now, presigned=True)
    if now > signed_at + expires:
        raise S3Error("AccessDenied", "Request has expired (the presigned URL's time is up)")
    payload_hash = query.get("X-Amz-Content-Sha256", UNSIGNED)
    return _check(req, secret_for, cred, signed, amz_date, payload_hash, query["X-Amz-Signature"])


def _check(
    req: SignedRequest,
    secret_for: Callable[[str], str | None],
    cred: Credential,
    signed: list[str],
    amz_date: str,
    payload_hash: str,
    signature: str,
) -> Verified:
    if "host" not in signed:
        raise S3Error("AccessDenied", "the host header must be signed")
    secret = secret_for(cred.access_key)
    if secret is None:
        raise S3Error("InvalidAccessKeyId", f"unknown access key {cred.access_key}")
    key = signing_key(secret, cred)
    text = string_to_sign(amz_date, cred, canonical_request(req, signed, payload_hash))
    if not hmac.compare_digest(sign(key, text), signature):
        raise S3Error(
            "SignatureDoesNotMatch",
            f"the signature for access key {cred.access_key} does not match: check the secret",
        )
    return Verified(cred.access_key, payload_hash, signature, amz_date, cred, key)


def _credential(text: str) -> Credential:
    parts = text.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or parts[3] != "s3":
        raise S3Error(
            "AuthorizationHeaderMalformed", "credential must be KEY/DATE/REGION/s3/aws4_request"
        )
    return Credential(*parts[:4])


def _check_date(amz_date: str, cred: Credential, now: float, presigned: bool) -> float:
    try:
        t = time.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    except ValueError:
        raise S3Error("AccessDenied", "X-Amz-Date is missing or not YYYYMMDDTHHMMSSZ") from None
    if amz_date[:8] != cred.date:
        raise S3Error("SignatureDoesNotMatch", "the credential's date is not X-Amz-Date's date")
    signed_at = float(calendar.timegm(t))
    if presigned:
        if signed_at - now > MAX_SKEW_S:
            raise S3Error("AccessDenied", "the presigned URL is dated in the future")
    elif abs(signed_at - now) > MAX_SKEW_S:
        raise S3Error(
            "RequestTimeTooSkewed", "the request's time is more than 15 minutes from the server's"
        )
    return signed_at
