"""Autoscaling settings that both doors share, read from here and nowhere else.

The offline job's pool of device actors, the online app's replicas and the cluster's nodes under
them scale on the same terms: keep `min_workers` up, grow to `max_workers`, and give back what has
been idle for `idle_timeout_s`. The job reads them through cluster/resources.py, the app through
`serve_autoscaling_config`, and k8s/raycluster.yaml's autoscaler carries the same idle timeout
(tests/test_k8s.py checks it).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Autoscaling:
    min_workers: int = 1  # device actors (job) or replicas (app) kept up
    max_workers: int = 8  # at most, unless the job is told otherwise or the cluster's GPUs say fewer
    # The app asks for another replica when each has this many requests in flight: enough to fill a
    # token batch (serve_apps/config.yaml's max_ongoing_requests is twice it).
    target_ongoing_requests: int = 64
    upscale_delay_s: float = 5
    idle_timeout_s: int = 60


AUTOSCALING = Autoscaling()


def serve_autoscaling_config(settings: Autoscaling = AUTOSCALING) -> dict:
    """The app's `autoscaling_config` (Ray Serve's AutoscalingConfig fields)."""
    return {
        "min_replicas": settings.min_workers,
        "max_replicas": settings.max_workers,
        "target_ongoing_requests": settings.target_ongoing_requests,
        "upscale_delay_s": settings.upscale_delay_s,
        "downscale_delay_s": settings.idle_timeout_s,
    }
