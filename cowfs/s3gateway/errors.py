"""S3's error codes, and how a `CowfsError` becomes one.

Every failure the gateway answers is an `S3Error`: a code a client's SDK recognises, the HTTP
status S3 gives it, and a message that says why in cowfs's terms.
"""

from __future__ import annotations

from cowfs.errors import (
    AlreadyExists,
    Conflict,
    CowfsError,
    NameTooLong,
    NotFound,
    ObjectMissing,
    StoreUnavailable,
    UsageError,
)

STATUS = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "EntityTooLarge": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MethodNotAllowed": 405,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "OperationAborted": 409,
    "PreconditionFailed": 412,
    "RequestTimeTooSkewed": 403,
    "ServiceUnavailable": 503,
    "SignatureDoesNotMatch": 403,
    "XAmzContentSHA256Mismatch": 400,
}


class S3Error(Exception):
    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS.get(code, 400)


def from_cowfs(e: CowfsError, not_found: str = "NoSuchKey") -> S3Error:
    """The S3 error a lake error means; `not_found` says which kind of thing was missing."""
    if isinstance(e, NameTooLong):
        return S3Error("KeyTooLongError", str(e))
    if isinstance(e, ObjectMissing | StoreUnavailable):
        return S3Error("InternalError", str(e), 500)
    if isinstance(e, NotFound):
        return S3Error(not_found, str(e))
    if isinstance(e, AlreadyExists):
        return S3Error("BucketAlreadyOwnedByYou", str(e))
    if isinstance(e, Conflict):
        return S3Error("OperationAborted", str(e), 503)
    if isinstance(e, UsageError):
        return S3Error("InvalidArgument", str(e))
    return S3Error("InternalError", str(e), 500)
