"""Objects by URI: ``gs://bucket/path`` through google-cloud-storage, and local paths.

Every lane reads manifests and reference images and writes images, metadata and reports through
this one module, so retry safety lives here once:

* writes are atomic: a reader never sees half an object (FAULTS.md S4). GCS uploads are atomic by
  nature; local writes go to a temp file in the same directory and are renamed into place.
* ``if_absent=True`` is create-only: GCS ``ifGenerationMatch=0``; locally a hard link of the temp
  file, which fails if the name exists. The loser of a race gets :class:`PreconditionFailedError`
  so two workers can never both "win" an item.
* ``if_generation_match`` lets a caller do read-modify-write (batch job state: intent ->
  submitted). Local files carry a synthetic generation derived from inode, mtime and size, and a
  conditional local write holds an exclusive ``flock`` on the directory while it checks and renames.
* big objects are streamed (``open_read`` / ``iter_lines``); nothing loads a multi-GB batch output
  to get its lines.

A :class:`Storage` serves both schemes, so a local manifest may name ``gs://`` reference images.
There is deliberately no Airflow import here; ``airflow_banana.hooks.storage`` turns a connection
into credentials.

Known emulator gap: fake-gcs-server enforces ``ifGenerationMatch`` on single-request (multipart)
uploads only, i.e. objects up to 8 MiB; real GCS also enforces it on resumable uploads.
Another one, real on GCS too: if a create-only upload succeeds but its response is lost, the
client's retry sees 412 and this module reports :class:`PreconditionFailedError` for our own
write. Callers that must tell the two apart compare the stored object with what they wrote.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

from airflow_banana.exceptions import (
    ConfigurationError,
    ObjectNotFoundError,
    PreconditionFailedError,
    StorageError,
)

if TYPE_CHECKING:
    from google.cloud.storage import Blob, Client

GS_SCHEME = "gs://"
FILE_SCHEME = "file://"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
EMULATOR_PROJECT = "banana-emulator"
# Reads of big objects go in chunks of this size; it bounds the memory of a line scan.
READ_CHUNK_BYTES = 4 * 1024 * 1024
_TMP_MARK = ".banana-tmp-"

__all__ = [
    "ObjectStat",
    "Storage",
    "TruncatedLine",
    "join_uri",
    "open_storage",
    "parent_uri",
    "split_lines",
]


@dataclass(frozen=True)
class ObjectStat:
    """What a caller needs before reading: size and the generation for a conditional write."""

    uri: str
    size: int
    generation: int
    content_type: str | None = None


def utcnow_iso() -> str:
    """Now in UTC to the second (``2026-12-04T16:51:17+00:00``): the time stamp of every stored record."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def join_uri(prefix: str, *parts: str) -> str:
    """``prefix`` and ``parts`` joined by exactly one ``/`` (works for gs://, file:// and paths)."""
    out = prefix
    for part in parts:
        part = part.strip("/")
        if not part:
            continue
        out = part if not out else out.rstrip("/") + "/" + part
    return out


def parent_uri(uri: str) -> str:
    """The "directory" containing ``uri`` (without a trailing slash)."""
    head, sep, _ = uri.rstrip("/").rpartition("/")
    if not sep:
        return "."
    if head.endswith(":/"):  # gs://bucket -> keep the bucket root
        return uri.rstrip("/")
    return head or "/"


class TruncatedLine(bytes):
    """The first bytes of a line longer than the caller's bound; ``length`` is the whole line's."""

    length: int

    def __new__(cls, head: bytes, length: int) -> TruncatedLine:
        line = super().__new__(cls, head)
        line.length = length
        return line


TRUNCATED_HEAD_BYTES = 1024


def split_lines(
    stream: IO[bytes], *, chunk_size: int = READ_CHUNK_BYTES, max_line_bytes: int | None = None
) -> Generator[bytes, None, None]:
    """Lines of a binary stream without their ``\\n`` / ``\\r\\n``, reading ``chunk_size`` at a time.

    Memory is bounded by the chunk size plus the longest line, whatever the object's size. With
    ``max_line_bytes`` it is bounded by about twice the chunk size: a longer line is never
    assembled, only counted as it streams past, and yielded as a :class:`TruncatedLine` (its
    first bytes and its length).
    """
    limit = max_line_bytes if max_line_bytes is not None else -1
    parts: list[bytes] = []  # the line so far; joined once, so a long line costs no quadratic copying
    pending = 0  # its length
    head: bytes | None = None  # set once the line is known to be over the limit
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            length = pending + end - start
            if head is None and 0 <= limit < length:
                head = _head([*parts, chunk[start : start + TRUNCATED_HEAD_BYTES]])
            if head is not None:
                yield TruncatedLine(head, length)
            else:
                piece = chunk[start:end]
                line = b"".join([*parts, piece]) if parts else piece
                yield line[:-1] if line.endswith(b"\r") else line
            parts, pending, head = [], 0, None
            start = end + 1
        pending += len(chunk) - start
        if head is None:
            parts.append(chunk[start:] if start else chunk)  # a line longer than the chunk: no copy
            if 0 <= limit < pending:
                head, parts = _head(parts), []
        del chunk  # not held while the next one is read
    if head is not None:
        yield TruncatedLine(head, pending)
    elif pending:
        line = b"".join(parts)
        yield line[:-1] if line.endswith(b"\r") else line


def _head(parts: list[bytes]) -> bytes:
    out = b""
    for part in parts:  # never joins more than the head: the parts may be megabytes
        out += part[: TRUNCATED_HEAD_BYTES - len(out)]
        if len(out) >= TRUNCATED_HEAD_BYTES:
            break
    return out


class _Backend:
    """One scheme's primitives; :class:`Storage` adds the shared helpers on top."""

    def read_bytes(self, uri: str) -> tuple[bytes, int]:
        raise NotImplementedError

    def open_read(self, uri: str) -> contextlib.AbstractContextManager[BinaryIO]:
        raise NotImplementedError

    def stat(self, uri: str) -> ObjectStat | None:
        raise NotImplementedError

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        content_type: str | None,
        if_absent: bool,
        if_generation_match: int | None,
    ) -> int:
        raise NotImplementedError

    def list(self, prefix_uri: str) -> Iterator[str]:
        raise NotImplementedError

    def delete(self, uri: str) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------- local


def _local_path(uri: str) -> Path:
    return Path(uri[len(FILE_SCHEME) :] if uri.startswith(FILE_SCHEME) else uri)


def _local_generation(st: os.stat_result) -> int:
    # Every write renames a fresh temp file into place, so (inode, mtime, size) changes with each
    # write; hashing keeps the number opaque, like a GCS generation. Never 0 (0 means "absent").
    digest = hashlib.blake2b(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}".encode(), digest_size=7)
    return int.from_bytes(digest.digest(), "big") + 1


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """Exclusive advisory lock on a directory, so check-then-rename is atomic among our writers."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class _LocalBackend(_Backend):
    def read_bytes(self, uri: str) -> tuple[bytes, int]:
        path = _local_path(uri)
        try:
            with path.open("rb") as fh:
                return fh.read(), _local_generation(os.fstat(fh.fileno()))
        except FileNotFoundError as err:
            raise ObjectNotFoundError(f"{uri} does not exist") from err
        except OSError as err:
            raise StorageError(f"reading {uri} failed: {err}") from err

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[BinaryIO]:
        try:
            fh = _local_path(uri).open("rb")
        except FileNotFoundError as err:
            raise ObjectNotFoundError(f"{uri} does not exist") from err
        except OSError as err:
            raise StorageError(f"opening {uri} failed: {err}") from err
        with fh:
            yield fh

    def stat(self, uri: str) -> ObjectStat | None:
        path = _local_path(uri)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise StorageError(f"stat of {uri} failed: {err}") from err
        if not path.is_file():
            return None
        return ObjectStat(uri=uri, size=st.st_size, generation=_local_generation(st))

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        content_type: str | None,
        if_absent: bool,
        if_generation_match: int | None,
    ) -> int:
        path = _local_path(uri)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"writing {uri} failed: cannot create its directory: {err}") from err
        tmp = path.with_name(f".{path.name}{_TMP_MARK}{uuid.uuid4().hex}")
        try:
            with tmp.open("xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                # rename keeps inode and mtime, so this is the generation the object will have
                generation = _local_generation(os.fstat(fh.fileno()))
            if if_absent or if_generation_match == 0:
                self._link_create_only(uri, tmp, path)
            elif if_generation_match is not None:
                with _dir_lock(path.parent):
                    current = self.stat(uri)
                    if current is None or current.generation != if_generation_match:
                        raise PreconditionFailedError(
                            f"{uri} changed since generation {if_generation_match} (another writer "
                            "updated it); nothing was written: re-read it and decide again"
                        )
                    os.replace(tmp, path)
            else:
                os.replace(tmp, path)
            return generation
        except StorageError:
            raise
        except OSError as err:
            raise StorageError(f"writing {uri} failed, the old object (if any) is intact: {err}") from err
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    @staticmethod
    def _link_create_only(uri: str, tmp: Path, path: Path) -> None:
        try:
            os.link(tmp, path)  # atomic: fails if the name exists, whoever created it
        except FileExistsError as err:
            raise PreconditionFailedError(
                f"{uri} already exists (another writer created it first); nothing was overwritten"
            ) from err
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            # Filesystems without hard links: O_EXCL still guarantees a single creator, but the
            # winner's bytes appear in two steps, so copy under the directory lock.
            with _dir_lock(path.parent):
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError as exists:
                    raise PreconditionFailedError(
                        f"{uri} already exists (another writer created it first); nothing was overwritten"
                    ) from exists
                os.close(fd)
                os.replace(tmp, path)

    def list(self, prefix_uri: str) -> Iterator[str]:
        prefix = str(_local_path(prefix_uri))
        if prefix_uri.endswith("/"):
            prefix = prefix.rstrip("/") + "/"
        root = prefix if prefix.endswith("/") else os.path.dirname(prefix)
        if not os.path.isdir(root or "."):
            return
        lead = FILE_SCHEME if prefix_uri.startswith(FILE_SCHEME) else ""
        found: list[str] = []
        for dirpath, _, filenames in os.walk(root or "."):
            for name in filenames:
                # os.walk(".") yields "./x"; the prefix was given without it
                full = os.path.join(dirpath, name) if root else os.path.relpath(os.path.join(dirpath, name))
                if _TMP_MARK not in name and full.startswith(prefix):
                    found.append(lead + full)
        yield from sorted(found)

    def delete(self, uri: str) -> None:
        try:
            _local_path(uri).unlink()
        except FileNotFoundError as err:
            raise ObjectNotFoundError(f"{uri} does not exist, nothing deleted") from err
        except OSError as err:
            raise StorageError(f"deleting {uri} failed: {err}") from err


# ------------------------------------------------------------------------------------------ gcs


def _split_gs(uri: str) -> tuple[str, str]:
    bucket, _, name = uri[len(GS_SCHEME) :].partition("/")
    if not bucket:
        raise ConfigurationError(f"{uri} names no bucket; use gs://bucket/path")
    return bucket, name


_CLIENTS: dict[tuple[str, str, str], Client] = {}
_CLIENTS_LOCK = threading.Lock()


def _gcs_client(credentials_info: dict[str, Any] | None, project: str | None) -> Client:
    """One client per (emulator, credentials, project) per process: clients hold connection pools."""
    from google.cloud import storage

    emulator = os.environ.get(EMULATOR_ENV, "")
    # The key must not hold the private key itself; a digest identifies the account just as well.
    creds_key = (
        hashlib.sha256(json.dumps(credentials_info, sort_keys=True).encode()).hexdigest()
        if credentials_info
        else ""
    )
    key = (emulator, creds_key, project or "")
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is not None:
            return client
        try:
            if emulator:
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(
                    credentials=AnonymousCredentials(),
                    project=project or EMULATOR_PROJECT,
                )
            elif credentials_info:
                from google.oauth2 import service_account

                creds = service_account.Credentials.from_service_account_info(credentials_info)
                client = storage.Client(credentials=creds, project=project or creds.project_id)
            else:
                client = storage.Client(project=project)  # Application Default Credentials
        except ConfigurationError:
            raise
        except Exception as err:
            # The message names the kind of failure only: the credentials dict is a secret.
            raise ConfigurationError(
                f"cannot create a GCS client ({type(err).__name__}); check the service-account JSON "
                "in the connection or the Application Default Credentials; nothing was read or written"
            ) from err
        _CLIENTS[key] = client
        return client


def _gcs_error(uri: str, action: str, err: Exception) -> StorageError:
    from google.api_core import exceptions as gexc

    if isinstance(err, gexc.NotFound):
        return ObjectNotFoundError(f"{uri} does not exist ({action})")
    if isinstance(err, gexc.PreconditionFailed):
        return PreconditionFailedError(
            f"{uri}: {action} lost to another writer (generation precondition failed, HTTP 412); "
            "nothing was overwritten"
        )
    return StorageError(f"{action} {uri} failed ({type(err).__name__}: {err}); a retry is safe")


class _GCSBackend(_Backend):
    def __init__(self, credentials_info: dict[str, Any] | None, project: str | None):
        self._credentials_info = credentials_info
        self._project = project

    def __repr__(self) -> str:  # never show the credentials dict
        return f"_GCSBackend(project={self._project!r})"

    def _blob(self, uri: str, generation: int | None = None) -> Blob:
        bucket, name = _split_gs(uri)
        if not name or name.endswith("/"):
            raise ConfigurationError(f"{uri} names no object (it ends at a bucket or folder)")
        client = _gcs_client(self._credentials_info, self._project)
        return client.bucket(bucket).blob(name, generation=generation)

    def read_bytes(self, uri: str) -> tuple[bytes, int]:
        blob = self._blob(uri)
        try:
            data = blob.download_as_bytes()
        except Exception as err:
            raise _gcs_error(uri, "reading", err) from err
        return data, int(blob.generation or 0)

    @contextlib.contextmanager
    def open_read(self, uri: str) -> Iterator[BinaryIO]:
        found = self.stat(uri)
        if found is None:
            raise ObjectNotFoundError(f"{uri} does not exist (opening for read)")
        # Pin the generation: a chunked read of an object replaced mid-way must fail, not mix.
        blob = self._blob(uri, generation=found.generation)
        from google.api_core import exceptions as gexc

        try:
            reader = blob.open("rb", chunk_size=READ_CHUNK_BYTES)
        except Exception as err:
            raise _gcs_error(uri, "opening", err) from err
        try:
            with reader:
                yield cast(BinaryIO, reader)
        except gexc.GoogleAPIError as err:
            raise _gcs_error(uri, "streaming", err) from err

    def stat(self, uri: str) -> ObjectStat | None:
        bucket, name = _split_gs(uri)
        if not name:
            return None
        client = _gcs_client(self._credentials_info, self._project)
        try:
            blob = client.bucket(bucket).get_blob(name)
        except Exception as err:
            from google.api_core import exceptions as gexc

            if isinstance(err, gexc.NotFound):  # the bucket itself is missing
                return None
            raise _gcs_error(uri, "stat of", err) from err
        if blob is None:
            return None
        return ObjectStat(
            uri=uri,
            size=int(blob.size or 0),
            generation=int(blob.generation or 0),
            content_type=blob.content_type,
        )

    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        content_type: str | None,
        if_absent: bool,
        if_generation_match: int | None,
    ) -> int:
        blob = self._blob(uri)
        match = 0 if if_absent else if_generation_match
        try:
            blob.upload_from_string(
                data,
                content_type=content_type or "application/octet-stream",
                if_generation_match=match,
            )
        except Exception as err:
            raise _gcs_error(uri, "writing", err) from err
        return int(blob.generation or 0)

    def list(self, prefix_uri: str) -> Iterator[str]:
        bucket, prefix = _split_gs(prefix_uri)
        client = _gcs_client(self._credentials_info, self._project)
        try:
            for blob in client.list_blobs(bucket, prefix=prefix or None):
                yield f"{GS_SCHEME}{bucket}/{blob.name}"
        except Exception as err:
            raise _gcs_error(prefix_uri, "listing", err) from err

    def delete(self, uri: str) -> None:
        try:
            self._blob(uri).delete()
        except Exception as err:
            raise _gcs_error(uri, "deleting", err) from err


# ------------------------------------------------------------------------------------ front door


_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _scheme_of(uri: str) -> str:
    if uri.startswith(GS_SCHEME):
        return "gs"
    if uri.startswith(FILE_SCHEME) or not _SCHEME_RE.match(uri):
        return "local"
    scheme = uri.split("://", 1)[0]
    raise ConfigurationError(
        f"{uri}: scheme '{scheme}://' is not supported; use gs://bucket/path, file:// or a local path"
    )


class Storage:
    """Read and write objects by URI (``gs://``, ``file://`` or a local path).

    Build it with :func:`open_storage` (or ``hooks.storage.storage_for`` inside Airflow). It is safe
    to share between threads; the GCS client is created on first ``gs://`` use.
    """

    def __init__(self, *, credentials_info: dict[str, Any] | None = None, project: str | None = None):
        self._local = _LocalBackend()
        self._gcs = _GCSBackend(credentials_info, project)

    def __repr__(self) -> str:
        return "Storage(gs://, file://, local paths)"

    def _backend(self, uri: str) -> _Backend:
        if not uri:
            raise ConfigurationError("an empty URI was given where an object or prefix is required")
        return self._gcs if _scheme_of(uri) == "gs" else self._local

    # -- reads
    def read_bytes(self, uri: str) -> bytes:
        """The whole object; for big objects use :meth:`open_read` or :meth:`iter_lines`."""
        return self._backend(uri).read_bytes(uri)[0]

    def read_with_generation(self, uri: str) -> tuple[bytes, int]:
        """The object and the generation it was read at, for a later ``if_generation_match``."""
        return self._backend(uri).read_bytes(uri)

    def open_read(self, uri: str) -> contextlib.AbstractContextManager[BinaryIO]:
        """A binary stream of the object; raises :class:`ObjectNotFoundError` when it is missing."""
        return self._backend(uri).open_read(uri)

    def iter_lines(self, uri: str) -> Iterator[str]:
        """UTF-8 lines without line endings, streamed: memory does not grow with the object."""
        with self.open_read(uri) as stream:
            for number, raw in enumerate(split_lines(stream), start=1):
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise StorageError(f"{uri}: line {number} is not valid UTF-8 ({err.reason})") from err

    def read_text(self, uri: str) -> str:
        data = self.read_bytes(uri)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise StorageError(f"{uri} is not valid UTF-8 text ({err.reason})") from err

    def read_json(self, uri: str) -> Any:
        text = self.read_text(uri)
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise StorageError(f"{uri} is not valid JSON (line {err.lineno}: {err.msg})") from err

    def stat(self, uri: str) -> ObjectStat | None:
        """Size and generation of the object, or None when it does not exist."""
        return self._backend(uri).stat(uri)

    def exists(self, uri: str) -> bool:
        return self.stat(uri) is not None

    def size(self, uri: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""
        found = self.stat(uri)
        return None if found is None else found.size

    def list(self, prefix_uri: str) -> Iterator[str]:
        """URIs of all objects whose URI starts with ``prefix_uri`` (recursive), in name order.

        As in GCS, the prefix is a string prefix: end it with ``/`` to mean "this folder".
        """
        return self._backend(prefix_uri).list(prefix_uri)

    # -- writes
    def write_bytes(
        self,
        uri: str,
        data: bytes,
        *,
        content_type: str | None = None,
        if_absent: bool = False,
        if_generation_match: int | None = None,
    ) -> int:
        """Write the whole object atomically and return its new generation.

        ``if_absent`` = create-only; ``if_generation_match`` = replace only that generation. The
        loser of either race gets :class:`PreconditionFailedError` and nothing is overwritten.
        """
        if if_absent and if_generation_match not in (None, 0):
            raise ConfigurationError(
                f"{uri}: if_absent and if_generation_match={if_generation_match} contradict each other"
            )
        return self._backend(uri).write_bytes(
            uri,
            bytes(data),
            content_type=content_type,
            if_absent=if_absent,
            if_generation_match=if_generation_match,
        )

    def write_text(
        self,
        uri: str,
        text: str,
        *,
        content_type: str = "text/plain; charset=utf-8",
        if_absent: bool = False,
        if_generation_match: int | None = None,
    ) -> int:
        return self.write_bytes(
            uri,
            text.encode("utf-8"),
            content_type=content_type,
            if_absent=if_absent,
            if_generation_match=if_generation_match,
        )

    def write_json(
        self,
        uri: str,
        value: Any,
        *,
        if_absent: bool = False,
        if_generation_match: int | None = None,
    ) -> int:
        """``value`` as stable JSON (sorted keys, indent 2, trailing newline) so diffs stay small."""
        text = json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
        return self.write_text(
            uri,
            text,
            content_type="application/json",
            if_absent=if_absent,
            if_generation_match=if_generation_match,
        )

    def delete(self, uri: str) -> None:
        """Delete the object; :class:`ObjectNotFoundError` when it is already gone."""
        self._backend(uri).delete(uri)


def open_storage(
    uri_or_prefix: str = "",
    *,
    credentials_info: dict[str, Any] | None = None,
    project: str | None = None,
) -> Storage:
    """A :class:`Storage`; ``uri_or_prefix`` is checked so an unsupported scheme fails up front.

    ``credentials_info`` is a service-account JSON dict; without it GCS uses Application Default
    Credentials. With ``STORAGE_EMULATOR_HOST`` set, GCS calls go to that emulator anonymously.
    """
    if uri_or_prefix:
        _scheme_of(uri_or_prefix)
        if uri_or_prefix.startswith(GS_SCHEME):
            _split_gs(uri_or_prefix)
    return Storage(credentials_info=credentials_info, project=project)
