"""Where a store root lives: a local folder or a URL, as pyarrow writes it and DuckDB reads it."""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

# Object stores publish an upload only when it completes, and their "rename" is a copy + delete,
# so there a direct write is already all-or-nothing and cheaper.
_OBJECT_STORES = {"s3": ("s3", "s3fs", "s3"), "gs": ("gs", "gcsfs", "gcs"), "gcs": ("gs", "gcsfs", "gcs")}


class MissingFilesystemError(RuntimeError):
    """A URL store whose scheme needs a package that is not installed."""


@dataclass(frozen=True)
class Location:
    """Where a store root lives: the filesystem pyarrow writes with and the URL DuckDB reads."""

    filesystem: pafs.FileSystem
    path: str  # the root inside `filesystem`
    url: str  # the root as DuckDB addresses it
    rename_into_place: bool
    fsspec_filesystem: object | None = None  # registered with DuckDB, so it needs no extension

    @property
    def is_object_store(self) -> bool:
        return urlparse(self.url).scheme in ("s3", "gs")

    def write_whole(self, path: str, data: bytes) -> None:
        """Write a small file whole or not at all, its folder created: renamed into place from a
        temporary name on a filesystem, one upload on an object store. OSError leaves nothing behind."""
        fs, temporary = self.filesystem, f"{path}.tmp-{uuid.uuid4().hex}"
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if not self.rename_into_place:
            with fs.open_output_stream(path) as handle:
                handle.write(data)
            return
        try:
            with fs.open_output_stream(temporary) as handle:
                handle.write(data)
            fs.move(temporary, path)
        except OSError:
            try:
                fs.delete_file(temporary)
            except OSError:
                pass
            raise


def locate(root: str) -> Location:
    """Map a store root (folder or URL) to filesystems; nothing is created or contacted.

    s3:// and gs:// go through fsspec (s3fs, gcsfs) for pyarrow and DuckDB alike: DuckDB reads them
    through the registered filesystem, with no httpfs extension to download, and the SDKs take
    credentials and endpoints (AWS_ENDPOINT_URL) from their usual environment and profile chain."""
    parsed = urlparse(root)
    scheme = parsed.scheme.lower()
    if len(scheme) <= 1 or scheme == "file":  # no scheme, a Windows drive letter, or file://
        local = Path(parsed.path if scheme == "file" else root).expanduser().absolute()
        return Location(pafs.LocalFileSystem(), local.as_posix(), local.as_posix(), rename_into_place=True)
    if scheme in _OBJECT_STORES:
        native, package, extra = _OBJECT_STORES[scheme]
        fs = _object_filesystem(native, package, extra)
        bucket_path = f"{parsed.netloc}{parsed.path}".rstrip("/")
        handler = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
        return Location(handler, bucket_path, f"{native}://{bucket_path}", False, fs)
    import fsspec

    fs = fsspec.filesystem(scheme)
    handler = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return Location(handler, fs._strip_protocol(root).rstrip("/"), root.rstrip("/"), True, fs)


def _object_filesystem(native: str, package: str, extra: str):
    import fsspec

    try:
        __import__(package)
    except ImportError:
        raise MissingFilesystemError(
            f"a {native}:// store needs {package}: pip install 'mindsmirror[{extra}]'") from None
    # Other processes write the same bucket: a cached listing would hide their parts.
    return fsspec.filesystem(native, use_listings_cache=False, skip_instance_cache=True)


def machine_folder(root: str, what: str) -> Path:
    """A folder on this machine for `what` of the store at `root` that only this machine needs (the
    journal of answers received but not yet stored, a simulated teacher's batches):
    $MINDSMIRROR_STATE_DIR, else ~/.local/state/mindsmirror, then `what`, then a hash of the root."""
    base = os.environ.get("MINDSMIRROR_STATE_DIR") or Path.home() / ".local" / "state" / "mindsmirror"
    return Path(base) / what / hashlib.sha256(root.encode()).hexdigest()[:16]
