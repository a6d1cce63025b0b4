"""The primitives of AWS Signature Version 4 that both ends of cowfs use: the credential scope,
the signing key, the string to sign and the signature. The S3 gateway checks signatures with
them (`cowfs.s3gateway.sigv4`) and the S3 store's fast GET path makes them
(`cowfs.objectstore.sigv4`); each builds its canonical request its own way around these.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class Credential:
    access_key: str
    date: str
    region: str
    service: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def hmac_sha256(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, cred: Credential) -> bytes:
    k = hmac_sha256(("AWS4" + secret).encode(), cred.date)
    for part in (cred.region, cred.service, "aws4_request"):
        k = hmac_sha256(k, part)
    return k


def string_to_sign(amz_date: str, cred: Credential, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{cred.scope}\n{digest}"


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
