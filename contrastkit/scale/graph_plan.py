"""S-GRADCACHE memory plan — which chunks keep a full graph, a partial one, or none.

Spec id: S-GRADCACHE (docs/performance.md). With gradient caching every chunk of every modality
is, between the two passes, one of

* **full** — its autograd graph is kept; pass 2 runs only its backward (saves a forward);
* **partial** — ``scale.partial_graph``: the outputs of products, convolutions and attention are
  kept, the elementwise work between them is recomputed in pass 2 (saves most of a forward in a
  fraction of the memory);
* **none** — pass 2 re-runs its forward (the two-pass gradient cache).

Which to choose under a memory budget (``scale.graph_memory``) depends on the towers: on the demo
model the image tower (ResNet, BatchNorm: no partial graphs) saves a 50 ms forward per 66 MiB
kept, the text tower (BERT) 42 ms per 103 MiB — or 21 ms per 32 MiB partially. :func:`measure_costs`
measures these per modality on the first batch (bytes by counting storages; times as the median
of three runs), and :func:`plan_graphs` spends the budget greedily by time saved per byte: for a
modality where a partial graph saves more per byte than a full one, first partial graphs, then
upgrades of partial to full ones, each chunk at most once. Whatever the plan, gradients, the RNG
stream and BatchNorm statistics are the same (``scale.grad_cache``): the plan only moves time and
memory, so a plan from timings is safe.
"""

from __future__ import annotations

import statistics
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from contrastkit.models.dual_encoder import DualEncoder
from contrastkit.scale.grad_cache import graph_bytes
from contrastkit.scale.partial_graph import partial_bytes, partial_forward, partial_probe, untouched

__all__ = ["GraphPlan", "TowerCost", "chunks_to_keep", "measure_costs", "plan_graphs"]


@dataclass(frozen=True)
class TowerCost:
    """One chunk of one modality: bytes of its full graph, the seconds a re-run costs (a forward
    without a graph), and — ``None`` where refused — bytes of its partial graph and the seconds
    its recompute adds to the backward."""

    full_bytes: int
    rerun_s: float
    partial_bytes: int | None = None
    partial_s: float | None = None


@dataclass(frozen=True)
class GraphPlan:
    """How many chunks per modality keep a full graph and how many a partial one."""

    full: dict[str, int]
    partial: dict[str, int]

    def bytes(self, costs: Mapping[str, TowerCost]) -> int:
        """Bytes the plan's graphs hold, from the measured costs."""
        return sum(
            self.full.get(m, 0) * c.full_bytes + self.partial.get(m, 0) * (c.partial_bytes or 0)
            for m, c in costs.items()
        )

    def describe(self, chunks: Mapping[str, int]) -> str:
        """E.g. ``image: 16 full of 16; text: 9 partial, 0 full of 16``."""
        parts = []
        for m, n in chunks.items():
            p = self.partial.get(m, 0)
            kept = f"{p} partial, {self.full.get(m, 0)} full" if p else f"{self.full.get(m, 0)} full"
            parts.append(f"{m}: {kept} of {n}")
        return "; ".join(parts)


def _per_byte(seconds: float, nbytes: int) -> float:
    return float("inf") if nbytes <= 0 else seconds / nbytes


def _partial_pays(c: TowerCost) -> bool:
    """Partial graphs help when they save time and more per byte than the upgrade to full does
    (otherwise full graphs alone spend the budget better)."""
    if c.partial_bytes is None or c.partial_s is None:
        return False
    if c.partial_s >= c.rerun_s or c.partial_bytes >= c.full_bytes:
        return False
    first = _per_byte(c.rerun_s - c.partial_s, c.partial_bytes)
    return first > _per_byte(c.partial_s, c.full_bytes - c.partial_bytes)


def plan_graphs(costs: Mapping[str, TowerCost], chunks: Mapping[str, int], budget: int) -> GraphPlan:
    """Spend ``budget`` bytes on graphs: steps (none → partial, partial → full, or none → full)
    taken in order of seconds saved per byte, as many of each as fit and as the modality has
    chunks for; what is left then buys partial graphs for chunks still re-run. Greedy, hence not
    always the knapsack optimum; a zero-byte graph is always kept."""
    steps: list[tuple[float, str, str]] = []
    for m, c in costs.items():
        if _partial_pays(c):
            assert c.partial_bytes is not None and c.partial_s is not None
            steps.append((_per_byte(c.rerun_s - c.partial_s, c.partial_bytes), m, "partial"))
            steps.append((_per_byte(c.partial_s, c.full_bytes - c.partial_bytes), m, "upgrade"))
        else:
            steps.append((_per_byte(c.rerun_s, c.full_bytes), m, "full"))
    steps.sort(key=lambda s: -s[0])  # stable: a modality's partial step precedes its upgrade
    full, part = dict.fromkeys(costs, 0), dict.fromkeys(costs, 0)
    left = max(0, int(budget))
    for _, m, kind in steps:
        c, n = costs[m], chunks[m]
        if kind == "partial":
            cost, avail = c.partial_bytes or 0, n - full[m] - part[m]
        elif kind == "upgrade":
            cost, avail = c.full_bytes - (c.partial_bytes or 0), part[m]
        else:
            cost, avail = c.full_bytes, n - full[m]
        take = avail if cost <= 0 else min(avail, left // cost)
        left -= take * max(cost, 0)
        if kind == "partial":
            part[m] += take
        elif kind == "upgrade":
            part[m] -= take
            full[m] += take
        else:
            full[m] += take
    for m, c in costs.items():  # what is left: partial graphs that save any time at all
        if c.partial_bytes and c.partial_s is not None and c.partial_s < c.rerun_s:
            take = min(chunks[m] - full[m] - part[m], left // c.partial_bytes)
            part[m] += take
            left -= take * c.partial_bytes
    return GraphPlan(full, part)


def measure_costs(
    model: DualEncoder,
    batch: Mapping[str, torch.Tensor],
    chunk_size: int,
    repeats: int = 5,
    times: Mapping[str, TowerCost] | None = None,
) -> dict[str, TowerCost]:
    """:class:`TowerCost` of every modality of ``batch`` the model embeds, on its first chunk.
    Times: a forward without a graph (the re-run), and for a partial graph its forward+backward
    minus a full graph's (the recompute); backward through ``torch.autograd.grad``, so no
    ``.grad`` is touched. ``times``: earlier costs whose seconds are reused (only bytes are
    measured). Under a forked RNG with the buffers restored: measuring changes nothing."""
    names = [m for m in batch if m in model.modalities]
    full_b, part_b = graph_bytes(model, batch, chunk_size), partial_bytes(model, batch, chunk_size)
    costs: dict[str, TowerCost] = {}
    refused = {m: full_b[m] == 0 or partial_probe(model, m, batch[m]) is not None for m in names}
    if times is not None and all(m in times for m in names):
        measured = {m: (times[m].rerun_s, times[m].partial_s) for m in names}
    else:
        with untouched(model):
            first = {m: batch[m][:chunk_size] for m in names}
            measured = _times(model, first, {m: not refused[m] for m in names}, repeats)
    for m in names:
        rerun, extra = measured[m]
        costs[m] = TowerCost(full_b[m], rerun, None if refused[m] else part_b[m], extra)
    if times is None:
        costs = _same_on_every_rank(costs, next(model.parameters()).device)
    return costs


def _same_on_every_rank(costs: dict[str, TowerCost], device: torch.device) -> dict[str, TowerCost]:
    """Under torch.distributed, every rank's times replaced by their mean, so that every rank
    makes the same plan (FSDP all-gathers in every forward: ranks must re-run the same chunks).
    Called on the first measurement only, which every rank makes at the same step."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return costs
    names = sorted(costs)
    vals = [[costs[m].rerun_s, costs[m].partial_s or 0.0] for m in names]
    t = torch.tensor(vals, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return {
        m: replace(
            costs[m], rerun_s=float(t[i, 0]), partial_s=None if costs[m].partial_s is None else float(t[i, 1])
        )
        for i, m in enumerate(names)
    }


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds ``fn`` takes: on a GPU wall time between synchronisations; on a CPU this process's
    CPU time, which other jobs on the machine stretch far less than wall time (under a busy
    machine's wall times two towers measured alike and the planner chose a slow plan)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - t0
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _times(
    model: DualEncoder, chunks: Mapping[str, torch.Tensor], partial: Mapping[str, bool], repeats: int
) -> dict[str, tuple[float, float | None]]:
    """Per modality: seconds of a forward without a graph, and (where ``partial``) what a partial
    graph's recompute adds — its forward+backward minus a full graph's (CPU time on a CPU). One
    untimed warm-up round, then ``repeats`` rounds running every measurement of every modality
    once (drift and other jobs hit all alike); medians, the recompute as the median of per-round
    differences."""
    params = [p for p in model.parameters() if p.requires_grad]

    def no_graph(m: str) -> None:
        with torch.no_grad():
            model.encode(m, chunks[m])

    def step(m: str, fwd: Callable[[DualEncoder, str, torch.Tensor], torch.Tensor]) -> None:
        with torch.enable_grad():
            out = fwd(model, m, chunks[m])
            if out.requires_grad:
                torch.autograd.grad(out.float().sum(), params, allow_unused=True)

    def encode(model: DualEncoder, m: str, x: torch.Tensor) -> torch.Tensor:
        return model.encode(m, x)

    rerun: dict[str, list[float]] = {m: [] for m in chunks}
    extra: dict[str, list[float]] = {m: [] for m in chunks}
    for r in range(repeats + 1):
        for m in chunks:
            dev = chunks[m].device
            t0 = _timed(lambda m=m: no_graph(m), dev)
            if partial[m]:
                tf = _timed(lambda m=m: step(m, encode), dev)
                tp = _timed(lambda m=m: step(m, partial_forward), dev)
                if r:
                    extra[m].append(tp - tf)
            if r:
                rerun[m].append(t0)
    return {
        m: (statistics.median(rerun[m]), max(0.0, statistics.median(extra[m])) if partial[m] else None)
        for m in chunks
    }


# per model: input key -> costs; times are measured once per chunk size and reused for new shapes
_Costs = dict[tuple, dict[str, TowerCost]]
_MEASURED: weakref.WeakKeyDictionary[DualEncoder, _Costs] = weakref.WeakKeyDictionary()
_REPORTED: weakref.WeakKeyDictionary[DualEncoder, str] = weakref.WeakKeyDictionary()  # last plan shown
# towers already warned about refusing partial graphs: once per run, not every step (anything that
# touches the warning filters, torch included, resets Python's own once-per-location memory)
_WARNED: weakref.WeakKeyDictionary[DualEncoder, set[str]] = weakref.WeakKeyDictionary()


def chunks_to_keep(
    model: DualEncoder,
    batch: Mapping[str, torch.Tensor],
    chunk_size: int,
    keep: int | None,
    budget: int | None,
    partial: int | None = None,
    report: Callable[[str], None] | None = None,
) -> GraphPlan:
    """The graphs pass 1 keeps: ``keep`` full and ``partial`` partial chunks per modality if either
    is given (no partial ones, with a warning, for a tower that refuses them); else
    :func:`plan_graphs` of ``budget`` bytes on the :func:`measure_costs` of this model, chunk size
    and input shapes (measured once each, so a new padded text length re-measures its bytes);
    else none. ``report`` gets a line when a newly measured input shape changes the plan."""
    names = [m for m in batch if m in model.modalities]
    if keep is not None or partial is not None or budget is None:
        parts = dict.fromkeys(names, partial or 0)
        for m in names:
            why = partial_probe(model, m, batch[m]) if parts[m] else None
            if why:  # e.g. a BatchNorm image tower beside a text tower that can take them
                parts[m] = 0
                if m not in _WARNED.setdefault(model, set()):
                    _WARNED[model].add(m)
                    warnings.warn(f"scale.partial_chunks: no partial graphs for {m!r}: {why}", stacklevel=2)
        return GraphPlan(dict.fromkeys(names, keep or 0), parts)
    key = (chunk_size, *((m, tuple(batch[m].shape[1:]), batch[m].dtype) for m in names))
    known = _MEASURED.setdefault(model, {})
    if key not in known:
        earlier = next((c for k, c in known.items() if k[0] == chunk_size), None)
        known[key] = measure_costs(model, batch, chunk_size, times=earlier)
        fresh = True
    else:
        fresh = False
    chunks = {m: -(-len(batch[m]) // chunk_size) for m in names}
    plan = plan_graphs(known[key], chunks, budget)
    if fresh and report is not None and _REPORTED.get(model) != plan.describe(chunks):
        _REPORTED[model] = plan.describe(chunks)  # padded text lengths vary: report changes only
        shapes = ", ".join(f"{m} {tuple(batch[m].shape[1:])}" for m in names)
        held = f"{plan.bytes(known[key]) / 2**20:.1f} MiB of {budget / 2**20:.1f} MiB"
        report(f"graph plan for {shapes}: {plan.describe(chunks)} ({held})")
    return plan
