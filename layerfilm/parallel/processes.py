"""Worker processes that never run the user's script again.

Python's ``spawn`` start method makes each child import the parent's ``__main__`` again (as
``__mp_main__``) before it runs its task. For a script without an ``if __name__ == "__main__":``
guard that re-runs the script's top level in every worker: the README's Python example saved as a
script dies with ``BrokenProcessPool``, and a training script that uses a callback starts training
again in the callback's process. layerfilm's workers need nothing from ``__main__`` (their tasks are
functions of layerfilm's own modules, and a user's ``--model`` is loaded by its path), so their
processes are started without it, as joblib's loky does.

:func:`context` is a ``spawn`` context whose processes are made so; every process layerfilm starts
(the local engine's pool, the live film's follower) comes from it.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import context as _context
from multiprocessing import spawn
from typing import Any

PREFIX = "layerfilm-"  # the names of layerfilm's processes: their preparation leaves __main__ out

_stdlib_preparation_data = spawn.get_preparation_data


def _preparation_data(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The stdlib's preparation data of a child, without ``__main__`` for layerfilm's own processes."""
    data = _stdlib_preparation_data(name, *args, **kwargs)
    if name.startswith(PREFIX):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


if getattr(spawn.get_preparation_data, "__module__", "") != __name__:  # once per process, whoever imports first
    spawn.get_preparation_data = _preparation_data


class _Process(_context.SpawnProcess):
    """A spawned process named ``layerfilm-...``, so that it never imports ``__main__``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.name.startswith(PREFIX):
            self.name = PREFIX + self.name


class _Context(_context.SpawnContext):
    Process = _Process


_CONTEXT = _Context()


def context() -> multiprocessing.context.SpawnContext:
    """The ``spawn`` context of layerfilm's processes (queues, events and processes whose children
    never import the user's ``__main__``)."""
    return _CONTEXT
