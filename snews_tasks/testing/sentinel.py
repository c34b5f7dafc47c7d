"""A Redis Sentinel group on one machine for the tests: a primary and a replica with AOF
fsynced on every write, and three sentinels, all real redis-server processes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ..entrypoints import localstack
from ..entrypoints.localstack import HOST, Service

MASTER_NAME = "snews"
HEALTHY_TIMEOUT_S = 30.0


@dataclass
class SentinelGroup:
    """The servers and where each keeps its data (so a killed one restarts with its AOF)."""

    data_dirs: dict[int, Path]
    redis: dict[int, Service]  # port -> server
    sentinels: list[Service] = field(default_factory=list)

    def url(self, db: int) -> str:
        """The sentinel:// URL of database `db` on the group's primary."""
        return ";".join(f"sentinel://{HOST}:{s.port}" for s in self.sentinels) + f"/{db}"

    def primary_port(self) -> int:
        for sentinel in self.sentinels:
            try:
                with redis.Redis(host=HOST, port=sentinel.port, socket_timeout=0.5) as client:
                    return int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1])
            except redis.RedisError:
                continue
        raise RuntimeError("no sentinel answers for the primary")

    def wait_healthy(self) -> None:
        """Every sentinel agrees on the primary, knows the others and a replica that is in
        sync: only then does a fault test mean what it says."""
        deadline = time.monotonic() + HEALTHY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._healthy():
                return
            time.sleep(0.2)
        raise RuntimeError("the sentinel group did not become healthy")

    def _healthy(self) -> bool:
        try:
            masters = set()
            for sentinel in self.sentinels:
                with redis.Redis(host=HOST, port=sentinel.port, socket_timeout=0.5) as client:
                    state = client.sentinel_master(MASTER_NAME)
                    if (
                        int(state["num-other-sentinels"]) != len(self.sentinels) - 1
                        or int(state["num-slaves"]) < 1
                    ):
                        return False
                    masters.add(int(state["port"]))
            if len(masters) != 1:
                return False
            [primary] = masters
            replicas = [port for port in self.redis if port != primary]
            for port in replicas:
                with redis.Redis(host=HOST, port=port, socket_timeout=0.5) as client:
                    if client.info("replication").get("master_link_status") != "up":
                        return False
            return True
        except redis.RedisError:
            return False

    def restart(self, port: int) -> None:
        """Start a stopped server again as a replica of the current primary, as a deployment's
        start script does (one restarted as a primary would be a second primary for a while)."""
        self.redis[port] = localstack.start_redis(
            port,
            data_dir=self.data_dirs[port],
            appendonly=True,
            appendfsync="always",
            replica_of=self.primary_port(),
        )

    def stop(self) -> None:
        for service in [*self.sentinels, *self.redis.values()]:
            if service.running():
                service.stop()


def start_sentinel_group(work_dir: Path) -> SentinelGroup:
    primary_port, replica_port = localstack.free_port(), localstack.free_port()
    dirs = {primary_port: work_dir / "primary", replica_port: work_dir / "replica"}
    group = SentinelGroup(data_dirs=dirs, redis={})
    try:
        group.redis[primary_port] = localstack.start_redis(
            primary_port, data_dir=dirs[primary_port], appendonly=True, appendfsync="always"
        )
        group.redis[replica_port] = localstack.start_redis(
            replica_port,
            data_dir=dirs[replica_port],
            appendonly=True,
            appendfsync="always",
            replica_of=primary_port,
        )
        group.sentinels = [localstack.start_sentinel(primary_port, MASTER_NAME) for _ in range(3)]
        group.wait_healthy()
    except BaseException:
        group.stop()
        raise
    return group
