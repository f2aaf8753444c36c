"""Scale-out: where the dataset reductions run. ``engine="local"`` (this process) or
``engine="ray"`` (the same streaming reductions on shards of the dataset, run by Ray actors
(one per GPU or CPU slot) and merged; ``pip install 'convscope[ray]'``), or an
:class:`Engine` object such as ``RayEngine(address="auto", workers=8)``."""

from convscope.scale.engine import Engine, LocalEngine, RayEngine, resolve_engine
from convscope.scale.ray import shards, shutdown_workers

__all__ = ["Engine", "LocalEngine", "RayEngine", "resolve_engine", "shards", "shutdown_workers"]
