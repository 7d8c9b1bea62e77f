"""From "what devices does the cluster have" to actor pool sizes and per-actor resources."""

from __future__ import annotations

import math
from dataclasses import dataclass

from actors.errors import UserError
from cluster.autoscaling import AUTOSCALING

# CPU each tokenise/read/write task asks for. Small, because they are short and mostly wait on I/O or
# run in Rust; on a CPU-only node the embedding actors leave this much room for them.
CPU_STAGE_CPUS = 0.25
CPU_ACTOR_MAX_CPUS = 8


@dataclass(frozen=True)
class PoolPlan:
    """How many device actors, and what each holds."""

    min_actors: int
    max_actors: int
    gpus_per_actor: float
    cpus_per_actor: float

    @property
    def threads_per_actor(self) -> int:
        return threads_for(self.cpus_per_actor)


def threads_for(cpus: float) -> int:
    """Engine threads for a worker holding `cpus` Ray CPUs, rounded up (1.5 CPUs run 2 threads): its
    share of the node, never the node's count (ten actors on a 64-core node must not start 64 each)."""
    return max(1, math.ceil(cpus))


@dataclass(frozen=True)
class WorkerDevice:
    """What Ray gave the worker (device actor or Serve replica) this runs in."""

    device: str  # "cuda:0" or "cpu"
    threads: int | None  # engine threads; None outside Ray (the process's own CPUs)
    gpu_ids: tuple[str, ...]  # Ray's ids of the GPUs assigned, for reports


def this_worker() -> WorkerDevice:
    """The device, engine threads and Ray GPU ids of the current Ray worker: one rule for the job's
    actors and the app's replicas.

    Ray sets CUDA_VISIBLE_DEVICES to the assigned GPUs, so inside the worker the first one is
    ordinal 0 whatever its number on the node.
    """
    import ray

    gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return WorkerDevice("cuda:0" if gpu_ids else "cpu", threads_for(cpus) if cpus else None, gpu_ids)


def plan_pool(
    cluster: dict[str, float],
    node_cpus: list[float],
    min_actors: int | None = None,
    max_actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float | None = None,
) -> PoolPlan:
    """Pool sizes from the cluster's resources and the user's flags (None: choose).

    GPUs present: one actor per `gpus_per_actor` share of them (default a whole GPU each), 1 CPU each.
    At least AUTOSCALING.min_workers actors are kept up.
    CPU only: actors as wide as a node (at most 8 CPUs each), minus room for the CPU stages.
    """
    gpus = cluster.get("GPU", 0.0)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus else 0.0
    if gpus_per_actor < 0 or (gpus_per_actor > 1 and not float(gpus_per_actor).is_integer()):
        raise UserError(f"--gpus-per-actor must be a fraction of one GPU or a whole number, got {gpus_per_actor}")
    if gpus_per_actor > gpus and max_actors is None:
        # With --max-actors the user says how far to grow: an autoscaling cluster (KubeRay, GPU
        # groups from 0) adds GPU nodes as the pool asks for them.
        raise UserError(f"--gpus-per-actor {gpus_per_actor:g} but the cluster has {gpus:g} GPUs now; "
                         "on an autoscaling cluster give --max-actors too")
    if cpus_per_actor is None:
        if gpus_per_actor:
            cpus_per_actor = 1.0
        else:
            smallest = min(node_cpus) if node_cpus else cluster.get("CPU", 1.0)
            cpus_per_actor = min(CPU_ACTOR_MAX_CPUS, max(1.0, smallest - 2 * CPU_STAGE_CPUS))
    if gpus_per_actor:
        fit = max(1, int(gpus // gpus_per_actor))
    else:
        fit = max(1, int(cluster.get("CPU", 1.0) // cpus_per_actor))
    max_actors = max_actors or fit
    min_actors = min_actors or min(AUTOSCALING.min_workers, max_actors)
    if min_actors > max_actors:
        raise UserError(f"--min-actors {min_actors} is more than --max-actors {max_actors}")
    return PoolPlan(min_actors, max_actors, float(gpus_per_actor), float(cpus_per_actor))


def current_plan(**flags) -> PoolPlan:
    """The plan for the connected Ray cluster."""
    import ray

    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0.0) > 0]
    return plan_pool(ray.cluster_resources(), nodes, **flags)
