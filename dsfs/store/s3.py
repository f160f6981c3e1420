"""A store in an S3 bucket (AWS or any S3-compatible server), through boto3.

``s3://bucket/prefix`` names the store; every key is stored under ``prefix/``. The endpoint is
``Settings.s3_endpoint`` or ``AWS_ENDPOINT_URL`` (path-style addressing is used whenever an
endpoint is given); credentials and region come from boto3's usual chain.

Retrying a request is botocore's job ("standard" mode, ``Settings.s3_max_attempts`` attempts), but
botocore's retries end once the response headers arrive: a body that breaks off after them (a
dropped connection, a read timeout, fewer bytes than promised) would reach the caller. Reads of a
body are therefore retried here, as a whole new request, up to the same number of attempts with
backoff (``_read_retrying``); s3transfer does the same for ``download_file``. What is left after
the retries is mapped to the dsfs error tree once, in ``_translate``: a missing key is NotFound, a failed precondition is AlreadyExists or Conflict, and
anything else (refused connection, timeout, a missing bucket, an access error) is
StoreUnavailable with a one-line message naming the endpoint, bucket and key.

Conditional writes use S3's own ``If-None-Match: *`` and ``If-Match: <etag>`` on PutObject, so they
are atomic on the server. Retried conditional writes are ambiguous (the first attempt may have
landed before its answer was lost), so a 412 that follows a retry is double-checked against the
object now stored; see ``_landed_after_retry``.

Etags are handed out without their surrounding quotes; ``put_if_match`` accepts them in that form.
One boto3 client (thread-safe, its own connection pool) serves every thread using the store.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import boto3
import botocore.exceptions as bexc
from boto3.s3.transfer import ProgressCallbackInvoker, TransferConfig, create_transfer_manager
from botocore.config import Config
from s3transfer.exceptions import RetriesExceededError
from urllib3.exceptions import ProtocolError

from ..config import MiB, Settings
from ..errors import (
    AlreadyExists,
    Conflict,
    Corrupt,
    DsfsError,
    InvalidInput,
    NotFound,
    StoreUnavailable,
)
from .base import ObjectInfo, ObjectStore, Progress, check_key

MAX_POOL_CONNECTIONS = 32
MULTIPART_THRESHOLD = 8 * MiB
MULTIPART_CHUNK = 8 * MiB
TRANSFER_THREADS = 8

log = logging.getLogger(__name__)

# A response body that broke off after its headers: worth a new request.
_BROKEN_BODY = (bexc.IncompleteReadError, bexc.ResponseStreamingError, bexc.ReadTimeoutError,
                bexc.ConnectionClosedError, ProtocolError, ConnectionError, TimeoutError)
_BACKOFF_BASE = 0.05  # seconds; doubles each attempt, up to _BACKOFF_MAX, with jitter
_BACKOFF_MAX = 2.0

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_PRECONDITION_CODES = {"PreconditionFailed", "412"}

# What the connection-level botocore errors mean, for the one-line messages.
_CAUSES: list[tuple[type[Exception], str]] = [
    (bexc.EndpointConnectionError, "could not connect"),
    (bexc.ConnectTimeoutError, "connect timed out"),
    (bexc.ProxyConnectionError, "could not connect to the proxy"),
    (bexc.SSLError, "tls handshake failed"),
    (bexc.ReadTimeoutError, "read timed out"),
    (bexc.ConnectionClosedError, "connection closed by the server"),
    (bexc.ResponseStreamingError, "connection lost while reading"),
    (bexc.IncompleteReadError, "response cut short"),
]


def _unquote(etag: str) -> str:
    return etag.strip().strip('"')


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``; the prefix may be empty."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise InvalidInput(f"not an s3 url: {url!r} (use s3://bucket/prefix)")
    prefix = parts.path.strip("/")
    if prefix:
        check_key(prefix)
        prefix += "/"
    return parts.netloc, prefix


class S3Store(ObjectStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self.max_attempts = max(1, int(max_attempts))
        config = Config(
            retries={"mode": "standard", "max_attempts": self.max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            signature_version="s3v4",
            max_pool_connections=MAX_POOL_CONNECTIONS,
            s3={"addressing_style": "path"} if endpoint else None,
        )
        # A private session: boto3's default session is shared module state and not thread-safe.
        try:
            session = boto3.session.Session(region_name=region)
            self._client = session.client("s3", endpoint_url=endpoint or None, config=config)
        except ValueError as exc:  # a malformed endpoint url
            raise InvalidInput(f"invalid s3 endpoint {endpoint!r}: {exc}") from None
        except bexc.BotoCoreError as exc:
            raise StoreUnavailable(f"cannot set up s3 client for {self.url!r}: {exc}") from None
        self.endpoint = self._client.meta.endpoint_url
        self._transfer_config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNK,
            max_concurrency=TRANSFER_THREADS,
            num_download_attempts=self.max_attempts,
            preferred_transfer_client="classic",
        )
        self._transfer = None
        self._transfer_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, settings: Settings | None = None) -> S3Store:
        settings = settings or Settings()
        bucket, prefix = parse_url(url)
        endpoint = (
            settings.s3_endpoint
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        return cls(
            bucket,
            prefix,
            endpoint=endpoint,
            region=settings.s3_region,
            max_attempts=settings.s3_max_attempts,
            connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
        )

    # -- helpers -------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _where(self) -> str:
        return f"{self.endpoint} (bucket {self.bucket!r})"

    def _translate(self, exc: Exception, op: str, key: str | None) -> DsfsError | None:
        """The dsfs error for a boto3/botocore failure, or None if it is not one of ours."""
        about = f" ({op} {key!r})" if key is not None else f" ({op})"
        if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
            exc = exc.last_exception
        if isinstance(exc, bexc.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return StoreUnavailable(f"s3 bucket not found: {self.bucket!r} at {self.endpoint}")
            if code in _NOT_FOUND_CODES or (status == 404 and code != "NoSuchUpload"):
                return NotFound(f"object not found in store: {key!r}")
            if code in _PRECONDITION_CODES or status == 412:
                return Conflict(f"object changed concurrently: {key!r}")
            if code == "ConditionalRequestConflict" or status == 409:
                return Conflict(f"concurrent conditional write to {key!r}, try again")
            message = str(error.get("Message") or "").strip().rstrip(".").lower()
            detail = f"{code or status}" + (f": {message}" if message else "")
            return StoreUnavailable(f"s3 store error at {self._where()}{about}: {detail}")
        if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError,
                            bexc.CredentialRetrievalError)):
            return StoreUnavailable(
                f"no usable s3 credentials for {self.url!r}: {str(exc).lower().rstrip('.')}"
            )
        if isinstance(exc, bexc.ChecksumError):
            return Corrupt(f"checksum mismatch reading {key!r} from s3 store {self.url!r}")
        for kind, cause in _CAUSES:
            if isinstance(exc, kind):
                return StoreUnavailable(f"s3 store unreachable at {self._where()}: {cause}{about}")
        if isinstance(exc, (bexc.ConnectionError, bexc.HTTPClientError)):
            return StoreUnavailable(f"s3 store unreachable at {self._where()}: {exc}{about}")
        return None

    def _call(self, op: str, key: str | None, fn, /, **kwargs):
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            mapped = self._translate(exc, op, key)
            if mapped is None:
                raise
            raise mapped from exc

    def _body_retried(self, op: str, key: str, read):
        """``read`` (one GET and its body) made to send a new request while the body breaks off;
        StoreUnavailable naming the cause once ``max_attempts`` bodies have broken."""

        def attempts(**kwargs):
            for attempt in range(1, self.max_attempts + 1):
                try:
                    return read(**kwargs)
                except (*_BROKEN_BODY, _ShortBody) as exc:
                    if attempt == self.max_attempts:
                        cause = exc if isinstance(exc, _ShortBody) else _cause(exc)
                        raise StoreUnavailable(
                            f"s3 store at {self._where()} broke off the response body "
                            f"{attempt} times ({op} {key!r}): {cause}") from exc
                    delay = min(_BACKOFF_MAX, _BACKOFF_BASE * 2 ** attempt) * random.uniform(0.5, 1)
                    log.debug("%s %r: response body broke off (%s); retrying in %.2f s",
                              op, key, exc, delay)
                    time.sleep(delay)

        return attempts

    def _put(self, op: str, key: str, data: bytes, **conditions) -> str:
        response = self._call(op, key, self._client.put_object, Key=self._key(key), Body=data,
                              **conditions)
        return _unquote(response["ETag"])

    def _manager(self):
        with self._transfer_lock:
            if self._transfer is None:
                self._transfer = create_transfer_manager(self._client, self._transfer_config)
            return self._transfer

    # -- the interface -------------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes, str]:
        def read(**kwargs):
            response = self._client.get_object(**kwargs)
            return response["Body"].read(), _unquote(response["ETag"])

        return self._call("get", key, self._body_retried("get", key, read), Key=self._key(key))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise InvalidInput(f"invalid byte range for {key!r}: start {start}, length {length}")
        if length == 0:
            self.head(key)  # still NotFound for a missing key, like a zero-byte read of a file
            return b""

        def read(**kwargs):
            try:
                response = self._client.get_object(**kwargs)
            except bexc.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") == "InvalidRange" or (
                    exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416
                ):
                    return b""  # start is at or past the end of the object
                raise
            data = response["Body"].read()
            if response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 200:
                return data[start:start + length]  # a server that ignored the Range header
            _check_range_length(data, response.get("ContentRange"), start, length)
            return data

        return self._call("get_range", key, self._body_retried("get_range", key, read),
                          Key=self._key(key), Range=f"bytes={start}-{start + length - 1}")

    def put(self, key: str, data: bytes) -> str:
        return self._put("put", key, data)

    def put_file(self, key: str, path: str, progress: Progress | None = None) -> str:
        # Multipart above MULTIPART_THRESHOLD, parts sent in parallel. ``progress`` gets byte
        # counts as parts go out (negative if s3transfer rewinds a retried part).
        full = self._key(key)
        subscribers = [ProgressCallbackInvoker(progress)] if progress else None
        future = self._manager().upload(str(path), self.bucket, full, subscribers=subscribers)
        try:
            future.result()
        except KeyboardInterrupt:
            # s3transfer cancels the upload; wait for it to abort the multipart upload, so an
            # interrupted process leaves no partial object (nor its parts) behind.
            self._shutdown_transfers(cancel=True)
            raise
        except FileNotFoundError:
            raise NotFound(f"file to upload not found: {str(path)!r}") from None
        except Exception as exc:
            mapped = self._translate(exc, "put_file", key)
            if mapped is None:
                raise
            raise mapped from exc
        return self.head(key).etag

    def put_if_absent(self, key: str, data: bytes) -> str:
        try:
            return self._put("put_if_absent", key, data, IfNoneMatch="*")
        except Conflict as exc:
            if _is_precondition(exc.__cause__):
                if etag := self._landed_after_retry(key, data, exc.__cause__):
                    return etag
                raise AlreadyExists(f"object already exists in store: {key!r}") from None
            raise

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        try:
            return self._put("put_if_match", key, data, IfMatch=f'"{_unquote(etag)}"')
        except NotFound:
            # S3 answers 404 to If-Match on a missing key: someone deleted it since we read it.
            raise Conflict(f"object changed concurrently (now absent): {key!r}") from None
        except Conflict as exc:
            if _is_precondition(exc.__cause__):
                if new := self._landed_after_retry(key, data, exc.__cause__):
                    return new
            raise

    def _landed_after_retry(self, key: str, data: bytes, exc: bexc.ClientError) -> str | None:
        """After a 412 that came on a retry, the etag of our own earlier attempt if it landed.

        botocore retries a conditional put whose answer was lost (a timeout, a dropped
        connection). If the first attempt did succeed, the retry fails its precondition against
        our own write; reporting that as a conflict would make a compare-and-swap caller apply
        its change twice. A single-part S3 etag is the md5 of the body, so when the object now
        stored has exactly our bytes, the write is ours. Without a retry a 412 is always a real
        conflict, and this returns None.
        """
        if not exc.response.get("ResponseMetadata", {}).get("RetryAttempts"):
            return None
        try:
            current = self.head(key).etag
        except NotFound:
            return None
        return current if current == hashlib.md5(data, usedforsecurity=False).hexdigest() else None

    def head(self, key: str) -> ObjectInfo:
        response = self._call("head", key, self._client.head_object, Key=self._key(key))
        modified = response.get("LastModified")
        return ObjectInfo(key, int(response["ContentLength"]), _unquote(response["ETag"]),
                          modified.timestamp() if modified else 0.0)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        def collect(**kwargs) -> list[ObjectInfo]:
            found = []
            for page in self._client.get_paginator("list_objects_v2").paginate(**kwargs):
                for item in page.get("Contents", ()):
                    key = item["Key"][len(self.prefix):]
                    if not key or key.endswith("/"):  # folder markers some tools leave behind
                        continue
                    modified = item.get("LastModified")
                    found.append(ObjectInfo(key, int(item["Size"]), _unquote(item["ETag"]),
                                            modified.timestamp() if modified else 0.0))
            return found

        found = self._call("list", prefix, collect, Prefix=self.prefix + prefix)
        found.sort(key=lambda info: info.key)
        yield from found

    def delete(self, key: str) -> None:
        try:
            self._call("delete", key, self._client.delete_object, Key=self._key(key))
        except NotFound:
            pass

    def download_file(self, key: str, path: str, progress: Progress | None = None) -> None:
        subscribers = [ProgressCallbackInvoker(progress)] if progress else None
        future = self._manager().download(self.bucket, self._key(key), str(path),
                                          subscribers=subscribers)
        try:
            future.result()
        except Exception as exc:
            mapped = self._translate(exc, "download_file", key)
            if mapped is None:
                raise
            if isinstance(mapped, Conflict):
                mapped = Conflict(f"object changed while downloading: {key!r}")
            raise mapped from exc

    def _shutdown_transfers(self, cancel: bool = False) -> None:
        with self._transfer_lock:
            if self._transfer is not None:
                self._transfer.shutdown(cancel=cancel)
                self._transfer = None

    def close(self) -> None:
        self._shutdown_transfers()
        self._client.close()


class _ShortBody(Exception):
    """A ranged body with fewer bytes than its Content-Range promised."""


def _check_range_length(data: bytes, content_range: str | None, start: int, length: int) -> None:
    """A ranged body must hold the whole range, or everything up to the end of the object."""
    m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (content_range or "").strip())
    if not m:
        return
    total = int(m.group(3)) if m.group(3) != "*" else None
    expected = min(length, total - start) if total is not None else int(m.group(2)) - start + 1
    if len(data) < expected:
        raise _ShortBody(f"{len(data)} of {expected} bytes")


def _cause(exc: BaseException) -> str:
    for kind, cause in _CAUSES:
        if isinstance(exc, kind):
            return cause
    return str(exc).lower() or type(exc).__name__


def _is_precondition(exc: BaseException | None) -> bool:
    if not isinstance(exc, bexc.ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _PRECONDITION_CODES or status == 412
