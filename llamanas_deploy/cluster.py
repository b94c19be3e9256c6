"""Ray glue: the one module that imports Ray (the optional `ray` extra); nothing else does.

- `RayWorkers(workers, gpus_per_worker, address)` — `minimize(..., workers=RayWorkers(...))`
  measures the search's expensive objective on Ray actors. Each actor loads the super-network
  once and keeps it; the driver hands out one sub-network at a time (`ray.util.ActorPool`) and
  appends each result to its ledger as it arrives. An actor that dies is restarted by Ray
  (`max_restarts`) and its sub-network run again (`max_task_retries`); the driver receives one
  result per sub-network, so nothing is lost and nothing is counted twice.
- `RayNode(resource, address)` — `profile(..., node=RayNode("jetson"))` measures on the node that
  advertises the custom resource (`ray start --resources '{"jetson": 1}'`): the backend is
  built and the fingerprint taken there, and records stream back (a Ray streaming generator) to
  the driver, which appends them to the profile with its usual crash safety.
- `connected(address)` — "auto": the cluster named by RAY_ADDRESS or the latest one started on
  this machine with `ray start`, else a local Ray instance for this call only; or an address.
  A connection the caller already holds (`ray.init()` in a notebook or a test) is used as it is.

Paths (model directory, data files) are read on the workers as on the driver: the workers start
in the driver's working directory when their node has it, so every node needs the same layout
(a shared file system, or the same copies). A worker measuring another super-network or other
data than the driver describes is refused.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from .errors import BadInputError, LlamanasError
from .jsonfiles import dumps
from .profiler.runner import Measurer, ProfileSettings
from .search.objectives import ModelSize, Objective
from .search.problem import SearchProblem
from .subnet_config import SubnetConfig

RAY_EXTRA = "pip install 'llamanas-deploy[ray]'"
MAX_RESTARTS = 3  # times Ray restarts a worker that died; its task is retried as often


def import_ray():
    """The `ray` module, or a `BadInputError` naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise BadInputError(f"Ray is not installed; install the ray extra: {RAY_EXTRA}", param="address") from None
    return ray


CONNECT_TIMEOUT_S = 10.0


@contextmanager
def connected(address: str = "auto") -> Iterator[Any]:
    """`ray`, connected to the cluster at `address` ("auto" or HOST:PORT / ray://...) for the block."""
    ray = import_ray()
    if ray.is_initialized():  # the caller's own connection: theirs to close
        yield ray
        return
    if not isinstance(address, str) or not address:
        raise BadInputError(f"expected 'auto' or a Ray cluster address, got {address!r}", param="address")
    if address != "auto":
        _check_listening(address)
    try:
        if address != "auto":
            ray.init(address=address, log_to_driver=False)
        else:
            try:
                ray.init(address="auto", log_to_driver=False)
            except ConnectionError:  # no cluster running here: a local one, for this call only
                ray.init(include_dashboard=False, log_to_driver=False)
    except ConnectionError as err:
        raise BadInputError(
            f"could not connect to a Ray cluster at {address!r} ({str(err).splitlines()[0]}): is one running "
            "(`ray start --head`), and with token authentication, are RAY_AUTH_MODE=token and its token set here?",
            param="address",
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_listening(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """`BadInputError` within `timeout_s` when nothing accepts a connection at HOST:PORT (Ray itself
    retries a dead address for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadInputError(f"{address!r} is not 'auto', HOST:PORT or ray://HOST:PORT", param="address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise BadInputError(
            f"nothing answers at {address} within {timeout_s:g} s ({err.strerror or err}): is a Ray head running there "
            "(`ray start --head`)?",
            param="address",
        ) from None


def _check_fits(ray, need: dict[str, float], what: str, param: str) -> None:
    """Refuse a request no node of the cluster can ever hold (Ray would wait for it forever)."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(all(res.get(k, 0) >= v for k, v in need.items() if v) for res in nodes):
        have = ", ".join(dumps({k: v for k, v in sorted(res.items()) if not k.startswith("node:")}, indent=None)
                         for res in nodes)  # fmt: skip
        raise BadInputError(f"{what} needs {need}, and no node of the Ray cluster has it (nodes: {have})", param=param)


# ---- search: the expensive objective on actors ------------------------------------------------


class SearchWorker:
    """A Ray actor: the super-network loaded once, the expensive objectives bound to it."""

    def __init__(self, model: str, space, objectives: list, cwd: str, device: str):
        if os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths read as on the driver
        problem = SearchProblem(model, space, [*objectives, ModelSize()])
        self.measures = [m for m in problem.objectives if m.expensive]
        if device == "cuda":  # identities above were taken on the CPU copy
            import torch

            problem.supernet.model.to("cuda")
            torch.set_default_device("cuda")

    def describe(self) -> str:
        return dumps({m.name: m.describe() for m in self.measures}, indent=None)

    def evaluate(self, subnet: dict[str, Any]) -> tuple[str, dict[str, float]]:
        cfg = SubnetConfig.from_dict(subnet, "subnet")
        return cfg.id, {m.name: float(m.evaluate([cfg])[0]) for m in self.measures}

    def pid(self) -> int:
        return os.getpid()


class RayWorkers:
    """Where `minimize` measures the expensive objective: `workers` Ray actors, `gpus_per_worker` each.

    `actors` holds the live actor handles while a search runs (a test kills one to see it replaced).
    """

    def __init__(self, workers: int = 1, gpus_per_worker: float = 0.0, address: str = "auto"):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise BadInputError(f"expected an integer >= 1, got {workers!r}", param="workers")
        if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, (int, float)) or not 0 <= gpus_per_worker:
            raise BadInputError(f"expected a number >= 0, got {gpus_per_worker!r}", param="gpus_per_worker")
        import_ray()  # missing: said now, before any model is loaded
        self.workers, self.gpus_per_worker, self.address = workers, float(gpus_per_worker), address
        self.actors: list[Any] = []

    @contextmanager
    def open(self, problem: SearchProblem):
        """An `Evaluate` for the search's ledger; actors start on its first use and stop on exit."""
        with connected(self.address) as ray:
            try:
                yield lambda measures, configs: self._evaluate(ray, problem, measures, configs)
            finally:
                for actor in self.actors:
                    ray.kill(actor, no_restart=True)
                self.actors = []

    def _evaluate(self, ray, problem: SearchProblem, measures: Sequence[Objective], configs: Sequence[SubnetConfig]):
        from ray.util import ActorPool

        if not self.actors:
            self._start(ray, problem, measures)
        by_id = {c.id: c for c in configs}
        pool = ActorPool(self.actors)
        for subnet_id, values in pool.map_unordered(lambda a, c: a.evaluate.remote(c.to_dict()), list(configs)):
            yield by_id[subnet_id], values

    def _start(self, ray, problem: SearchProblem, measures: Sequence[Objective]) -> None:
        need = {"CPU": 1.0, "GPU": self.gpus_per_worker}
        _check_fits(ray, need, "a search worker", "gpus_per_worker" if self.gpus_per_worker else "workers")
        actor_class = ray.remote(SearchWorker).options(
            num_cpus=1, num_gpus=self.gpus_per_worker, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS
        )
        given = [o for o in problem.given if o.expensive]
        device = "cuda" if self.gpus_per_worker > 0 else "cpu"
        self.actors = [
            actor_class.remote(problem.model, problem.space, given, os.getcwd(), device) for _ in range(self.workers)
        ]
        expected = dumps({m.name: m.describe() for m in measures}, indent=None)
        for described in ray.get([a.describe.remote() for a in self.actors]):
            if described != expected:
                raise LlamanasError(
                    f"a Ray worker measures something else than this search: it has {described}, "
                    f"the search has {expected} (every node needs the same model and data files)"
                )


# ---- profile: measurements on the node that advertises a resource -----------------------------


class RayNode:
    """The Ray node advertising custom resource `resource` (one unit: the device, one profiler at a time)."""

    def __init__(self, resource: str, address: str = "auto"):
        if not isinstance(resource, str) or not resource:
            raise BadInputError(f"expected a resource name, got {resource!r}", param="node_resource")
        import_ray()
        self.resource, self.address = resource, address

    def connection(self):
        return connected(self.address)

    @contextmanager
    def open(self, source: str, settings: ProfileSettings):
        """A measurer (`fingerprint()`, `records(todo, common)`) living on the node, for the block."""
        with connected(self.address) as ray:
            need = {self.resource: 1.0, "GPU": 1.0 if settings.device == "cuda" else 0.0}
            _check_fits(ray, need, f"resource {self.resource!r}", "node_resource")
            actor = (
                ray.remote(Measurer)
                .options(resources={self.resource: 1}, num_cpus=0, num_gpus=need["GPU"], max_restarts=0)
                .remote(os.path.abspath(source) if os.path.exists(source) else source, settings)
            )
            try:
                yield _RemoteMeasurer(ray, actor)
            finally:
                ray.kill(actor, no_restart=True)


class _RemoteMeasurer:
    def __init__(self, ray, actor):
        self.ray, self.actor = ray, actor

    def fingerprint(self) -> dict[str, Any]:
        return self.ray.get(self.actor.fingerprint.remote())

    def records(self, todo, common) -> Iterator[dict[str, Any]]:
        for ref in self.actor.records.options(num_returns="streaming").remote(todo, common):
            yield self.ray.get(ref)
