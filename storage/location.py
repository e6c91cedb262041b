"""Where a store root lives: a local folder or a URL, as pyarrow writes it and DuckDB reads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

# Object stores publish an upload only when it completes, and their "rename" is a copy + delete,
# so there a direct write is already all-or-nothing and cheaper.
_NATIVE_OBJECT_STORES = {"s3": "s3", "gs": "gs", "gcs": "gs"}


@dataclass(frozen=True)
class Location:
    """Where a store root lives: the filesystem pyarrow writes with and the URL DuckDB reads."""

    filesystem: pafs.FileSystem
    path: str  # the root inside `filesystem`
    url: str  # the root as DuckDB addresses it
    rename_into_place: bool
    fsspec_filesystem: object | None = None  # registered with DuckDB for schemes it lacks


def locate(root: str) -> Location:
    """Map a store root (folder or URL) to filesystems; nothing is created or contacted."""
    parsed = urlparse(root)
    scheme = parsed.scheme.lower()
    if len(scheme) <= 1 or scheme == "file":  # no scheme, a Windows drive letter, or file://
        local = Path(parsed.path if scheme == "file" else root).expanduser().absolute()
        return Location(pafs.LocalFileSystem(), local.as_posix(), local.as_posix(), rename_into_place=True)
    bucket_path = f"{parsed.netloc}{parsed.path}".rstrip("/")
    if scheme in _NATIVE_OBJECT_STORES:
        native = _NATIVE_OBJECT_STORES[scheme]
        filesystem = pafs.S3FileSystem() if native == "s3" else pafs.GcsFileSystem()
        return Location(filesystem, bucket_path, f"{native}://{bucket_path}", rename_into_place=False)
    import fsspec

    fs = fsspec.filesystem(scheme)
    handler = pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    return Location(handler, fs._strip_protocol(root).rstrip("/"), root.rstrip("/"), True, fs)
