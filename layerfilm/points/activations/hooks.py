"""Forward hooks that hand each decoder block's output to a callback, registered inside a context
manager that always removes them (TransformerLens' habit), and end the pass after the last block."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class Stop(Exception):
    """Raised by the last block's hook: nothing after it (final norm, LM head) needs computing."""


@contextmanager
def capture(blocks: list[torch.nn.Module], on_output: Callable[[int, torch.Tensor], None],
            on_input: Callable[[torch.Tensor], None] | None = None) -> Iterator[None]:
    """Call ``on_output(l, hidden)`` with each block's output hidden states (B, T, D) during a forward
    pass (and ``on_input`` with the first block's input); the last block then raises :class:`Stop`,
    which the caller catches. The hooks are removed on exit, whatever happens inside."""

    def hidden(x):
        return x[0] if isinstance(x, (tuple, list)) else x

    def out_hook(l: int):
        def hook(module, args, output):
            on_output(l, hidden(output))
            if l == len(blocks) - 1:
                raise Stop

        return hook

    def in_hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if isinstance(x, torch.Tensor) and on_input is not None:
            on_input(x)

    handles = [b.register_forward_hook(out_hook(l)) for l, b in enumerate(blocks)]
    if on_input is not None:
        handles.append(blocks[0].register_forward_pre_hook(in_hook, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
