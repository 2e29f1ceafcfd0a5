"""Shard executors: who produces a run's shards. One interface, one implementation per
``--engine`` (the CLI's name for it): ``local`` worker processes on this machine, or ``ray``
tasks on a Ray cluster. Either yields the shards' `ShardDone` in the order given, so the
merged bytes do not depend on the executor."""

from __future__ import annotations

from functools import partial
from typing import Iterator

from dataprep.io.sources import Piece
from dataprep.runs import ray
from dataprep.runs.shards import ShardDone, ShardExecutor, ShardJob, produce_shard
from dataprep.runs.workers import RunConfig, TrustedWorkers


def _produce_item(job: ShardJob, item: tuple[Piece, str]) -> ShardDone:
    return produce_shard(job, *item)


class LocalShards:
    """The trusted worker processes of this machine, one shard per task."""

    def __init__(self, config: RunConfig, trusted: TrustedWorkers) -> None:
        self.workers = trusted.executor

    def produce(self, job: ShardJob, items: list[tuple[Piece, str]]) -> Iterator[ShardDone]:
        return (done for _, done in self.workers.map(partial(_produce_item, job), items))

    def terminate(self) -> None:
        self.workers.terminate()


class RayShards:
    """One Ray task per shard, with the engine the local probe trusted (`ray.produced_shards`)."""

    def __init__(self, config: RunConfig, trusted: TrustedWorkers) -> None:
        self.spec = trusted.tokenizer.engine_spec(trusted.engine)
        self.address, self.cpus = config.ray_address, config.workers
        self.probe_workers = trusted.executor  # the local probe's worker

    def produce(self, job: ShardJob, items: list[tuple[Piece, str]]) -> Iterator[ShardDone]:
        return ray.produced_shards(job, items, self.spec, self.address, self.cpus)

    def terminate(self) -> None:
        self.probe_workers.terminate()  # Ray tasks are cancelled when produce's generator closes


EXECUTORS: dict[str, type] = {"local": LocalShards, "ray": RayShards}


def shard_executor(config: RunConfig, trusted: TrustedWorkers) -> ShardExecutor:
    """The executor ``--engine`` names (RunConfig checked the name)."""
    return EXECUTORS[config.executor](config, trusted)
