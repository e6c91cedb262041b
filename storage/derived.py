"""Small values derived from the store's tables, remembered under what they were derived from.

Parts never change once written, and a new part gets a new name; so the name, size and
modification time of every part of the tables a value reads (`part_listing`), hashed with whatever
else the value depends on, name that value. A value kept under that name (`remember`) is found
again (`recall`) while no part of those tables is added, merged, moved away or overwritten; any
such change gives another name, and the value is derived again. The values are JSON files in
``<root>/_keys/<kind>/<name>.json``: derived data, like the kept sample keys (storage.keycache),
and deleting them costs one slow derivation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import pyarrow.fs as pafs

from storage.store import Store

FOLDER = "_keys"


def part_listing(store: Store, folders: Iterable[str]) -> list:
    """The name, size and modification time of each part under each folder of the store root.
    Size and time too: a part overwritten in place (damaged) changes the listing."""
    listing = []
    for folder in folders:
        selector = pafs.FileSelector(f"{store.location.path}/{folder}", allow_not_found=True)
        listing.append([folder, sorted((info.base_name, info.size, info.mtime_ns) for info in
                                       store.location.filesystem.get_file_info(selector)
                                       if info.base_name.startswith("part-"))])
    return listing


def name_of(*parts: object) -> str:
    """The name a value is kept under: a hash of what it was derived from (JSON-serialisable)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def recall(store: Store, kind: str, name: str) -> dict | None:
    """The value kept under `name`, or None when there is none (or it cannot be read)."""
    try:
        with store.location.filesystem.open_input_stream(f"{store.location.path}/{FOLDER}/{kind}/{name}.json") as f:
            value = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def remember(store: Store, kind: str, name: str, value: dict) -> None:
    """Keep `value` under `name`; best effort: a store that cannot take it is only slower."""
    try:
        store.location.write_whole(f"{store.location.path}/{FOLDER}/{kind}/{name}.json",
                                   json.dumps(value, sort_keys=True).encode())
    except OSError:
        pass
