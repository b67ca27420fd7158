"""Where tasks run: this process, a local pool of worker processes, or (layerfilm[dask]) a Dask cluster.

A task is a plain function of small, picklable arguments returning small arrays (a block chunk's
points and measures, a film segment's file name, an activation checkpoint's statistics). It takes a
keyword ``progress``: a callable it may call with a count (default 1) as it goes, e.g. once per
checkpoint read or frame drawn. Every engine sums those counts into one progress bar, whichever
worker sends them, and returns the results in the order of the arguments. Once a task has failed or
the caller is interrupted, ``progress`` raises ``Cancelled`` in the tasks still running, so they
stop at their next count (running their own cleanup, e.g. stopping an encoder) instead of finishing
work nobody will use.

    engine = get_engine("local", jobs=4)
    results = engine.map(block_task, [(series, wp, chunk, ...) for chunk in chunks], bar.update)

Engines: ``local`` (layerfilm.parallel.local) and ``dask`` (layerfilm.parallel.dask, imported only when chosen).
Inside :func:`session` (every CLI command, and ``render``) the local engine keeps one pool of workers for
all the maps of a run, and ``engine.start()`` starts them ahead, while this process still works.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from typing import Any

from layerfilm.errors import OptionsError
from layerfilm.parallel.base import DASK_MISSING, Engine, Progress, check_jobs, cores, worker_init
from layerfilm.parallel.local import LocalEngine, session
from layerfilm.registry import Registry

__all__ = ["DASK_MISSING", "ENGINES", "Engine", "LocalEngine", "Progress", "check_engine", "check_jobs", "cores",
           "get_engine", "session", "worker_init"]

ENGINES: Registry[Callable[..., Engine]] = Registry("engine")
ENGINES.register("local")(LocalEngine)


@ENGINES.register("dask")
def _dask(jobs: int = 0, address: str | None = None, **_: Any) -> Engine:
    """A Dask cluster at ``address``, or a LocalCluster of ``jobs`` processes (layerfilm.parallel.dask)."""
    from layerfilm.parallel.dask import DaskEngine

    return DaskEngine(jobs, address)


# dask's address schemes; tcp/tls/ws/wss need HOST:PORT, others (inproc://, ucx://) are taken as given
_ADDRESS = re.compile(r"(?:(tcp|tls|ws|wss)://)?(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+):(\d{1,5})/?|(inproc|ucx)://\S+")


def check_engine(name: str, address: str | None) -> None:
    """--engine and --address, checked before any checkpoint is read (the cluster is reached later,
    when its first task is sent): a known engine, an address for dask only and shaped like one, and
    dask installed when it is chosen."""
    ENGINES.get(name)
    if address is not None:
        if name != "dask":
            raise OptionsError(f"address={address}: applies to engine=dask only, not {name}")
        m = _ADDRESS.fullmatch(address)
        if m is None or (m.group(3) is not None and not 0 < int(m.group(3)) < 65536):
            raise OptionsError(f"address={address!r}: expected a Dask scheduler address such as tcp://HOST:8786")
    if name == "dask" and importlib.util.find_spec("distributed") is None:
        raise OptionsError(DASK_MISSING)


def get_engine(name: str = "local", jobs: int = 0, **options: Any) -> Engine:
    """The engine called ``name`` (local, or dask with layerfilm[dask]) running ``jobs`` tasks at once."""
    return ENGINES.get(name)(jobs=jobs, **options)
