"""Sky maps and their pictures, kept in MongoDB's GridFS beside the archive.

GridFS keeps the files with the alerts they belong to (one backup, one retention rule, no
shared disk between hosts). A file is named after its alert revision,
"<alert_id>-<revision>.fits" (the HEALPix map) or ".png" (its picture); that name is also
the last part of its public URL (`<SNEWS_PUBLIC_BASE_URL>/skymaps/<name>`), which the web
console serves and the GCN notice gives as `healpix_url`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import Any

import gridfs
from pymongo.database import Database

BUCKET = "skymaps"
NAME = re.compile(r"[A-Za-z0-9._-]+-\d+\.(fits|png)")
CONTENT_TYPES = {"fits": "application/fits", "png": "image/png"}


class NotStored(LookupError):
    """A file that should be there is not (yet): the localize task stores a map's picture just
    after it sends the revision that names it."""


def check_name(name: str) -> str:
    """A sky-map file name, or a ValueError: names go into URLs and file systems."""
    if not NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"skymap name: must look like <alert_id>-<revision>.fits or .png, got {name[:80]!r}"
        )
    return name


class SkymapStore:
    """Put is idempotent (a retried localization stores nothing twice); get returns the bytes."""

    def __init__(self, db: Database) -> None:
        self.bucket = gridfs.GridFSBucket(db, bucket_name=BUCKET)
        self.files = db[f"{BUCKET}.files"]

    def close(self) -> None:
        """Nothing to release: the database's client belongs to the archive, closed with it."""

    def ensure_indexes(self) -> None:
        self.files.create_index("filename", unique=True)

    def put(self, name: str, data: bytes, meta: Mapping[str, Any] | None = None) -> bool:
        """Store `data` under `name`; False when a file of that name is already there."""
        check_name(name)
        if self.files.count_documents({"filename": name}, limit=1):
            return False
        content_type = CONTENT_TYPES[name.rsplit(".", 1)[1]]
        self.bucket.upload_from_stream(
            name, data, metadata={**(meta or {}), "content_type": content_type}
        )
        return True

    def wait_for(self, name: str, timeout_s: float, poll_s: float = 0.1) -> bytes:
        """The file's bytes once it is stored; NotStored if it is not within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while (data := self.get(name)) is None:
            if time.monotonic() >= deadline:
                raise NotStored(f"sky-map file {name} is not stored after {timeout_s:g} s")
            time.sleep(poll_s)
        return data

    def get(self, name: str) -> bytes | None:
        """The file's bytes, or None when there is none of that name."""
        check_name(name)
        try:
            with self.bucket.open_download_stream_by_name(name) as stream:
                return bytes(stream.read())
        except gridfs.errors.NoFile:
            return None
