"""Redis clients for a single server or a Sentinel-managed primary, from one URL form.

A `redis://` (or `rediss://`, `unix://`) URL names one server. A `sentinel://` URL, in the
form kombu uses for the Celery broker, names the sentinels that know the primary:
``sentinel://[:PASSWORD@]HOST:PORT[;sentinel://HOST:PORT...]/DB``; the primary's name is the
`SNEWS_REDIS_SENTINEL_MASTER` setting. Such a client asks a sentinel for the primary on each
new connection, so after a failover it reconnects to the promoted replica.

Every client has a socket timeout: a client blocked on a frozen primary would otherwise go on
writing to it after it wakes, a "zombie" the sentinels have already replaced, and lose those
writes when it is demoted. `confirm_replicated` closes what is left of that window for the
writes that matter.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 1.0
SENTINEL_TIMEOUT_S = 0.5


def is_sentinel_url(url: str) -> bool:
    return url.startswith("sentinel://")


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], int, str | None]:
    """The sentinels' (host, port), the database number and the password of a sentinel URL."""
    hosts: list[tuple[str, int]] = []
    db, password = 0, None
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        if parsed.scheme != "sentinel" or not parsed.hostname or not parsed.port:
            raise ValueError(
                f"sentinel URL: each part must be sentinel://HOST:PORT, got "
                f"{parsed.scheme}://{parsed.hostname}:{parsed.port}"
            )
        hosts.append((parsed.hostname, parsed.port))
        password = parsed.password or password
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
    return hosts, db, password


def redis_client(
    url: str,
    *,
    master_name: str,
    decode_responses: bool = False,
    socket_timeout: float = SOCKET_TIMEOUT_S,
) -> redis.Redis:
    """A client of the server `url` names, or of the primary its sentinels name."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(
            url,
            decode_responses=decode_responses,
            socket_timeout=socket_timeout,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
        )
    hosts, db, password = parse_sentinel_url(url)
    sentinel = Sentinel(
        hosts,
        socket_timeout=SENTINEL_TIMEOUT_S,
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        },
    )
    client: redis.Redis = sentinel.master_for(
        master_name,
        db=db,
        password=password,
        decode_responses=decode_responses,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
    )
    return client


def celery_transport_options(url: str, master_name: str) -> dict[str, Any]:
    """What kombu needs besides a sentinel URL: the primary's name and the same timeouts."""
    if not is_sentinel_url(url):
        return {}
    return {
        "master_name": master_name,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "sentinel_kwargs": {
            "socket_timeout": SENTINEL_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        },
    }


def sentinel_pool(client: redis.Redis) -> SentinelConnectionPool | None:
    pool = client.connection_pool
    return pool if isinstance(pool, SentinelConnectionPool) else None


def primary_address(client: redis.Redis) -> tuple[str, int] | None:
    """The primary the sentinels name now (None for a single server)."""
    pool = sentinel_pool(client)
    if pool is None:
        return None
    return cast("tuple[str, int]", tuple(pool.sentinel_manager.discover_master(pool.service_name)))


class NotThePrimary(redis.ConnectionError):
    """A write went to a server the sentinels no longer name as the primary: it will be lost
    when that server is demoted, so what depends on it must not go out."""


def confirm_replicated(client: redis.Redis, replicas_acked: int, written_to_run_id: str) -> None:
    """After a write and a WAIT on one connection: without a replica's acknowledgement, make
    sure the server written to (its INFO run_id) is the one the sentinels name as primary,
    else raise: a zombie. The promoted primary itself has no replica until one re-joins; its
    writes go out, since a late supernova alert is worse than a possible repeat."""
    pool = sentinel_pool(client)
    if replicas_acked > 0 or pool is None:
        return
    host, port = pool.sentinel_manager.discover_master(pool.service_name)
    kwargs = pool.connection_kwargs
    with redis.Redis(
        host=host,
        port=port,
        password=kwargs.get("password"),
        socket_timeout=SENTINEL_TIMEOUT_S,
        socket_connect_timeout=SENTINEL_TIMEOUT_S,
    ) as primary:
        run_id = primary.info("server")["run_id"]
    if run_id != written_to_run_id:
        pool.disconnect()  # pooled connections still lead to the old primary
        raise NotThePrimary(
            f"the write went to a server that is no longer the primary (now {host}:{port})"
        )
