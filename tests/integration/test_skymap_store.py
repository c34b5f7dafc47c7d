"""Sky-map files in GridFS on a real MongoDB-protocol server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pymongo
import pytest

from snews_tasks.adapters.skymap_store import NotStored, SkymapStore
from snews_tasks.entrypoints import localstack

pytestmark = pytest.mark.integration


@pytest.fixture
def store(mongo_service: localstack.Service) -> Iterator[SkymapStore]:
    client: pymongo.MongoClient = pymongo.MongoClient(mongo_service.url,
                                                      serverSelectionTimeoutMS=10_000)
    db = client[f"test_{uuid.uuid4().hex}"]
    opened = SkymapStore(db)
    opened.ensure_indexes()
    try:
        yield opened
    finally:
        client.drop_database(db.name)
        client.close()


def test_a_map_is_stored_once_and_read_back_whole(store: SkymapStore) -> None:
    data = bytes(range(256)) * 4000  # larger than one GridFS chunk
    assert store.put("c-1-2.fits", data, {"alert_id": "c-1", "revision": 2}) is True
    assert store.put("c-1-2.fits", b"other", {}) is False  # a retried localization
    assert store.get("c-1-2.fits") == data
    assert store.get("c-1-3.fits") is None


@pytest.mark.parametrize("name", ["../etc/passwd", "c-x.fits", "c-1-2.exe", "a/b-1.png", ""])
def test_names_that_are_no_sky_map_are_refused(store: SkymapStore, name: str) -> None:
    with pytest.raises(ValueError, match="skymap name"):
        store.get(name)


def test_a_file_stored_a_moment_later_is_waited_for(store: SkymapStore) -> None:
    """The localize task stores a picture just after the revision naming it goes out."""
    with pytest.raises(NotStored, match="c-1-2.png is not stored after 0.2 s"):
        store.wait_for("c-1-2.png", timeout_s=0.2)
    later = threading.Timer(0.3, store.put, args=("c-1-2.png", b"\x89PNG picture", {}))
    later.start()
    try:
        assert store.wait_for("c-1-2.png", timeout_s=10) == b"\x89PNG picture"
    finally:
        later.join()
