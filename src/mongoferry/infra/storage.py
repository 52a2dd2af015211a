"""Where a backup lives: one small interface, a local directory and S3-compatible object storage.

Every put is atomic: a reader sees the whole object or none (a local file is written beside its
name and renamed over it; an S3 object exists only once its upload, multipart or not, completes).
Keys are `/`-separated paths relative to the backup's root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from mongoferry.core.errors import AuthError, ConnectError, UsageError

TMP_DIR = ".tmp"  # a local backup's files being written; never a key


class Storage(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None: ...
    def put_file(self, key: str, path: Path) -> None:
        """Store a local file under `key` (the file is consumed: moved or deleted)."""
    def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when there is none."""
    def get_file(self, key: str, path: Path) -> None: ...
    def list(self, prefix: str = "") -> list[str]:
        """Every key under `prefix`, sorted."""
    def delete(self, key: str) -> None: ...
    def spool(self) -> Path:
        """A local directory for files on their way to `put_file`."""


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def spool(self) -> Path:
        path = self.root / TMP_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put(self, key: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.spool())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        self.put_file(key, Path(tmp))

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with path.open("rb+") as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(path, target)
        _fsync_dir(target.parent)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def get_file(self, key: str, path: Path) -> None:
        shutil.copyfile(self._path(key), path)

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        keys = []
        for path in self.root.rglob("*"):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and not rel.startswith(TMP_DIR + "/") and rel.startswith(prefix):
                keys.append(rel)
        return sorted(keys)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        for parent in path.parents:  # a directory left empty goes too (as a prefix does on S3)
            if parent == self.root or not parent.is_relative_to(self.root):
                break
            try:
                parent.rmdir()
            except OSError:
                break


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Storage:
    """Any S3-compatible server: endpoint and credentials from the usual AWS variables
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION / AWS_DEFAULT_REGION)."""

    def __init__(self, bucket: str, prefix: str, url: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = url
        self.client: Any = boto3.session.Session().client(  # a session of its own: the environment as it is now
            "s3", region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, s3={"addressing_style": "path"},
                          connect_timeout=5, read_timeout=60))
        self._spool = Path(tempfile.mkdtemp(prefix="mongoferry-spool-"))

    def check(self) -> None:
        """Reach the bucket once, so a wrong endpoint, credential or bucket is one clear line."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise AuthError(f"no credentials for {self.url}", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(and AWS_ENDPOINT_URL for a server other than AWS)") from None
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise UsageError(f"bucket {self.bucket!r} does not exist ({self.url})",
                                 "create it first, or give another s3://BUCKET/PREFIX") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise AuthError(f"access to {self.url} was refused ({code})",
                                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's policy") from None
            raise ConnectError(f"the S3 server refused {self.url} ({code})", "check AWS_ENDPOINT_URL") from None
        except BotoCoreError as exc:
            endpoint = os.environ.get("AWS_ENDPOINT_URL", "AWS")
            raise ConnectError(f"cannot reach the S3 endpoint {endpoint} for {self.url}: {type(exc).__name__}",
                               "check AWS_ENDPOINT_URL and that the server is running") from None

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def spool(self) -> Path:
        self._spool.mkdir(parents=True, exist_ok=True)
        return self._spool

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_file(self, key: str, path: Path) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key))  # multipart when large
        finally:
            path.unlink(missing_ok=True)

    def get(self, key: str) -> bytes | None:
        for attempt in range(CHECKSUM_ATTEMPTS):
            try:
                reply = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            except self.client.exceptions.NoSuchKey:
                return None
            try:
                data: bytes = reply["Body"].read()
                return data
            except Exception as exc:
                _reraise_unless_checksum(exc, attempt, self.url, key)
        raise AssertionError("unreachable")

    def get_file(self, key: str, path: Path) -> None:
        for attempt in range(CHECKSUM_ATTEMPTS):
            try:
                self.client.download_file(self.bucket, self._key(key), str(path))
                return
            except Exception as exc:
                _reraise_unless_checksum(exc, attempt, self.url, key)

    def list(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self._key(prefix)):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


CHECKSUM_ATTEMPTS = 5


def _reraise_unless_checksum(exc: Exception, attempt: int, url: str, key: str) -> None:
    """A body whose checksum does not match is read again: a transfer went wrong, or (as on s3s-fs)
    the server's content and stored checksum were caught mid-replacement. Five in a row is an error."""
    from botocore.exceptions import FlexibleChecksumError

    if not isinstance(exc, FlexibleChecksumError):
        raise exc
    if attempt + 1 >= CHECKSUM_ATTEMPTS:
        raise ConnectError(f"{url}/{key} failed its checksum {CHECKSUM_ATTEMPTS} times in a row",
                           "check the S3 server and the network; nothing was read from it") from exc
    time.sleep(0.1 * 2**attempt)  # a replacement in progress takes a moment to finish


def open_storage(url: str, option: str, create: bool = False) -> Storage:
    """A directory path, or s3://BUCKET[/PREFIX]. A directory is created when `create`."""
    if url.startswith("s3://"):
        parsed = urlparse(url)
        if not parsed.netloc:
            raise UsageError(f"{option} {url!r} names no bucket", "write s3://BUCKET/PREFIX")
        storage = S3Storage(parsed.netloc, parsed.path, url)
        storage.check()
        return storage
    if "://" in url:
        raise UsageError(f"{option} {url!r} is neither a directory nor s3://BUCKET/PREFIX",
                         "give a local directory path or an s3:// URL")
    root = Path(url)
    if root.exists() and not root.is_dir():
        raise UsageError(f"{option} {url} exists and is not a directory", "give a directory for the backup")
    if not create and not root.is_dir():
        raise UsageError(f"{option} {url} does not exist", "give the directory the backup was written to")
    return LocalStorage(root)


class Prefixed:
    """One part of a storage: a shard's archive inside a cluster backup (`<root>/<NAME>/…`)."""

    def __init__(self, inner: Storage, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix.strip("/") + "/"
        self.url = f"{inner.url.rstrip('/')}/{self.prefix.rstrip('/')}"

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(self.prefix + key, data)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(self.prefix + key, path)

    def get(self, key: str) -> bytes | None:
        return self.inner.get(self.prefix + key)

    def get_file(self, key: str, path: Path) -> None:
        self.inner.get_file(self.prefix + key, path)

    def list(self, prefix: str = "") -> list[str]:
        return [k[len(self.prefix):] for k in self.inner.list(self.prefix + prefix)]

    def delete(self, key: str) -> None:
        self.inner.delete(self.prefix + key)

    def spool(self) -> Path:
        return self.inner.spool()
