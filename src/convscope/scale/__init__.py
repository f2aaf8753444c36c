"""Scale-out: the same streaming reductions on shards of a dataset, run by Ray actors (one per
GPU or CPU slot) and merged (``pip install 'convscope[ray]'``)."""

from convscope.scale.ray_engine import ray_dissect, ray_features, ray_scan, shards, shutdown_workers

__all__ = ["ray_dissect", "ray_features", "ray_scan", "shards", "shutdown_workers"]
