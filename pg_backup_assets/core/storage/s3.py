"""The S3 storage backend (any S3-compatible store through ``endpoint_url``).

Objects are streamed: large ones as multipart uploads whose parts carry a CRC32 checksum
that the store checks. The upload is completed only when the writing block exits
cleanly, after the caller has compared the sha256 of what it sent with the catalog's, so
a copy that went wrong is never visible. An
upload that fails is aborted; one the store could not be told to abort stays invisible
and is cleared by the next upload of the same key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from botocore.exceptions import BotoCoreError, ClientError

from pg_backup_assets.core.errors import NotFoundError, PgBackupError
from pg_backup_assets.core.storage.base import ObjectInfo, check_key

PART_SIZE = 16 << 20
# botocore's own retries ("standard" mode: exponential backoff with jitter, connection
# errors, throttling and 5xx included); offsite.s3.max_attempts in the config, which the
# Dagster S3Resource is built with too, so the CLI and the assets retry alike.
MAX_ATTEMPTS = 10


class S3Storage:
    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        object_lock_days: int = 0,
        part_size: int = PART_SIZE,
    ):
        if part_size < 5 << 20:
            raise PgBackupError("S3 part size must be at least 5 MiB")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.object_lock_days = object_lock_days
        self.part_size = part_size

    def describe(self) -> str:
        endpoint = getattr(self.client.meta, "endpoint_url", "")
        return f"s3://{self.bucket}/{self.prefix} ({endpoint})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _lock_args(self) -> dict[str, Any]:
        if not self.object_lock_days:
            return {}
        until = dt.datetime.now(dt.UTC) + dt.timedelta(days=self.object_lock_days)
        return {"ObjectLockMode": "COMPLIANCE", "ObjectLockRetainUntilDate": until}

    @contextlib.contextmanager
    def writer(
        self,
        key: str,
        final_key: Callable[[], str] | None = None,
    ) -> Iterator[BinaryIO]:
        """Callers check what they wrote inside the block: raising there aborts the upload."""
        if final_key is not None:
            raise PgBackupError("S3Storage cannot name an object after its content")
        upload = _Upload(self, self._key(key))
        try:
            yield upload  # type: ignore[misc]
            upload.finish()
        except BaseException:
            upload.abort()
            raise

    def open(self, key: str) -> BinaryIO:
        try:
            return self._call(
                "get", self.client.get_object, Bucket=self.bucket, Key=self._key(key)
            )["Body"]
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise NotFoundError(f"{key} is not in {self.describe()}") from None
            raise

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        out = []
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix)
        for page in self._call("listing", lambda: list(pages)):
            for obj in page.get("Contents", []):
                out.append(
                    ObjectInfo(
                        obj["Key"][len(self.prefix) :],
                        obj["Size"],
                        obj["LastModified"].timestamp(),
                    )
                )
        out.sort(key=lambda o: o.key)
        return out

    def stat(self, key: str) -> ObjectInfo:
        try:
            head = self._call(
                "head", self.client.head_object, Bucket=self.bucket, Key=self._key(key)
            )
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise NotFoundError(f"{key} is not in {self.describe()}") from None
            raise
        return ObjectInfo(key, head["ContentLength"], head["LastModified"].timestamp())

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call("delete", self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def tag(self, key: str, tags: dict[str, str]) -> None:
        """Replace an object's tags (S3 lifecycle rules and people can read the GFS tier)."""
        self._call(
            f"tagging of {key}",
            self.client.put_object_tagging,
            Bucket=self.bucket,
            Key=self._key(key),
            Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in sorted(tags.items())]},
        )

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Call the store (botocore retries transient failures); name what failed, and where."""
        try:
            return fn(**kwargs)
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise
            raise PgBackupError(f"S3 {what} on {self.describe()} failed: {exc}") from None
        except BotoCoreError as exc:  # connection refused/reset, timeouts, after the retries
            raise PgBackupError(f"S3 {what} on {self.describe()} failed: {exc}") from None


class _Upload:
    """A file-like that uploads what is written to it, several parts in flight.

    Memory is bounded by ``IN_FLIGHT`` parts whatever the object's size. Part sizes double
    every 1,000 parts, so an object of any size fits S3's 10,000-part limit.
    """

    IN_FLIGHT = 4

    def __init__(self, storage: S3Storage, key: str):
        self.s = storage
        self.key = key
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.upload_id: str | None = None
        self.futures: list[Future[dict[str, Any]]] = []
        self.pool: ThreadPoolExecutor | None = None

    def writable(self) -> bool:
        return True

    def _part_size(self) -> int:
        return self.s.part_size << (len(self.futures) // 1000)

    def write(self, data) -> int:  # noqa: ANN001 - bytes-like
        self.chunks.append(bytes(data))
        self.buffered += len(data)
        while self.buffered >= self._part_size():
            blob = b"".join(self.chunks)
            size = self._part_size()
            self.chunks = [blob[size:]] if len(blob) > size else []
            self.buffered = len(blob) - size
            self._send_part(blob[:size])
        return len(data)

    def flush(self) -> None:
        pass

    def _start(self) -> None:
        self._clear_stale_uploads()
        created = self.s._call(
            "create multipart upload",
            self.s.client.create_multipart_upload,
            Bucket=self.s.bucket,
            Key=self.key,
            ChecksumAlgorithm="CRC32",
            **self.s._lock_args(),
        )
        self.upload_id = created["UploadId"]
        self.pool = ThreadPoolExecutor(self.IN_FLIGHT, thread_name_prefix="s3-part")

    def _clear_stale_uploads(self) -> None:
        # Uploads of this key that an earlier failure could not abort: invisible, but billed.
        listed = self.s._call(
            "list multipart uploads",
            self.s.client.list_multipart_uploads,
            Bucket=self.s.bucket,
            Prefix=self.key,
        )
        for upload in listed.get("Uploads", []):
            if upload["Key"] == self.key:
                with contextlib.suppress(BotoCoreError, ClientError):
                    self.s.client.abort_multipart_upload(
                        Bucket=self.s.bucket, Key=self.key, UploadId=upload["UploadId"]
                    )

    def _send_part(self, data: bytes) -> None:
        if self.upload_id is None:
            self._start()
        # Bound what is in flight: wait for the oldest part before queueing another.
        pending = [f for f in self.futures if not f.done()]
        if len(pending) >= self.IN_FLIGHT:
            pending[0].result()
        for f in self.futures:
            if f.done() and f.exception():
                f.result()  # a part failed for good: stop sending
        number = len(self.futures) + 1
        self.futures.append(self.pool.submit(self._upload_part, number, data))

    def _upload_part(self, number: int, data: bytes) -> dict[str, Any]:
        sent = self.s._call(
            f"upload of part {number} of {self.key}",
            self.s.client.upload_part,
            Bucket=self.s.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
            ChecksumAlgorithm="CRC32",
        )
        part = {"PartNumber": number, "ETag": sent["ETag"]}
        if "ChecksumCRC32" in sent:  # completion must repeat the checksum the store recorded
            part["ChecksumCRC32"] = sent["ChecksumCRC32"]
        return part

    def finish(self) -> None:
        data = b"".join(self.chunks)
        if self.upload_id is None:  # small object: one atomic PUT
            self.s._call(
                f"upload of {self.key}",
                self.s.client.put_object,
                Bucket=self.s.bucket,
                Key=self.key,
                Body=data,
                ChecksumAlgorithm="CRC32",
                **self.s._lock_args(),
            )
            return
        if data:
            self._send_part(data)
        parts = [f.result() for f in self.futures]
        self.s._call(
            f"completion of {self.key}",
            self.s.client.complete_multipart_upload,
            Bucket=self.s.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )
        self.upload_id = None
        self._close_pool()

    def abort(self) -> None:
        self._close_pool()
        if self.upload_id is not None:
            with contextlib.suppress(BotoCoreError, ClientError):
                self.s.client.abort_multipart_upload(
                    Bucket=self.s.bucket, Key=self.key, UploadId=self.upload_id
                )
            self.upload_id = None

    def _close_pool(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def s3_client(
    endpoint_url: str | None, region: str | None, max_attempts: int = MAX_ATTEMPTS
) -> Any:
    """A boto3 S3 client from the standard AWS environment (used outside Dagster), configured
    as dagster-aws configures the S3Resource's: ``standard`` retries, ``max_attempts``."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region,
        config=Config(retries={"max_attempts": max_attempts, "mode": "standard"}),
    )
