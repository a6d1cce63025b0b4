"""The fast path's SigV4 signer agrees with botocore's, byte for byte."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cowfs.objectstore.http1 import host_header
from cowfs.objectstore.sigv4 import GetSigner


@pytest.mark.parametrize("token", [None, "session-token/+="])
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8333/bench/cowfs/chunks/ab/" + "ab" * 32,
        "http://Example.com:80/b/a%20b/c%2Bd/%C3%BCn%C3%AF/t~i%3Dl",
        "http://[::1]:9000/b/k",
    ],
)
def test_signature_is_botocores(url: str, token: str | None) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    req = AWSRequest(method="GET", url=url)
    S3SigV4Auth(creds.get_frozen_credentials(), "s3", "eu-west-3").add_auth(req)
    theirs = dict(req.headers.items())
    now = datetime.strptime(theirs["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    parts = urlsplit(url)
    host = host_header(parts.scheme, parts.hostname or "", parts.port)
    signer = GetSigner(creds, "eu-west-3")
    assert signer.headers(host, parts.path, now) == theirs
    assert signer.headers(host, parts.path, now) == theirs  # the cached signing key
