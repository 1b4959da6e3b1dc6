"""What autograd keeps for backward: the memory claims of the tiled losses are measured with it."""

from collections.abc import Callable

import torch


def saved_bytes(fn: Callable[[], object]) -> int:
    """Bytes autograd keeps for backward while ``fn()`` builds its graph (unique storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())
