"""Scale: exact losses at batch sizes beyond memory, as wrappers around any loss or model.

* ``tiled`` — CLIP/SigLIP in tiles, memory O(N·d + tile²) (S-INFCL);
* ``tiled_family`` / ``tiled_zoo`` — one masked tiled log-sum-exp and the InfoNCE family through it
  (NT-Xent, SupCon, DCL/DCLW, multi-positive, InfoNCE, AM/AAM-NT-Xent, HN-NCE);
* ``tiled_rule`` / ``tiled_more`` — tiles whose logits a rule builds (autograd recomputes each tile)
  and the losses through it (XMC decoupled softmax, MoCo v2 with a queue, LLaVE, Kernel-InfoNCE);
* ``grad_cache`` — gradient caching: contrastive batch ≫ what the towers fit, re-running only the
  chunks whose graphs do not fit (S-GRADCACHE); ``partial_graph`` keeps a chunk's costly outputs
  only (selective checkpointing), ``graph_plan`` spends a memory budget on full and partial graphs;
* ``distributed`` — torch.distributed gathers with correct gradients (S-GATHER);
* ``ring_siglip`` — SigLIP across ranks with texts passed round a ring (S-SIGLIP-RING);
* ``ring_clip`` — CLIP across ranks by Inf-CL's ring, no global matrix or gather, memory
  O(b·d + tile²) per rank (S-CLIP-RING).
"""

from contrastkit.scale.config import ScaleConfig
from contrastkit.scale.distributed import GatherLoss, all_gather_with_grad, is_distributed
from contrastkit.scale.grad_cache import (
    CachedEmbeddings,
    backward_through_chunks,
    embed_in_chunks,
    graph_bytes,
)
from contrastkit.scale.graph_plan import GraphPlan, TowerCost, chunks_to_keep, measure_costs, plan_graphs
from contrastkit.scale.launch import spawn_gloo
from contrastkit.scale.partial_graph import partial_bytes, partial_forward
from contrastkit.scale.ring_clip import CLIPRingLoss, clip_ring_loss
from contrastkit.scale.ring_siglip import SigLIPRingLoss, siglip_ring_loss
from contrastkit.scale.tiled import TILED, TiledLoss, tiled_clip_loss, tiled_siglip_loss
from contrastkit.scale.tiled_family import positive_logit_sums, tiled_masked_lse
from contrastkit.scale.tiled_more import TILED_MULTI
from contrastkit.scale.tiled_rule import tiled_rule_lse, tiled_rule_sum
from contrastkit.scale.tiled_zoo import TILED_FAMILY

__all__ = [
    "TILED",
    "TILED_FAMILY",
    "TILED_MULTI",
    "CLIPRingLoss",
    "CachedEmbeddings",
    "GatherLoss",
    "GraphPlan",
    "ScaleConfig",
    "SigLIPRingLoss",
    "TiledLoss",
    "TowerCost",
    "all_gather_with_grad",
    "backward_through_chunks",
    "chunks_to_keep",
    "clip_ring_loss",
    "embed_in_chunks",
    "graph_bytes",
    "is_distributed",
    "measure_costs",
    "partial_bytes",
    "partial_forward",
    "plan_graphs",
    "positive_logit_sums",
    "siglip_ring_loss",
    "spawn_gloo",
    "tiled_clip_loss",
    "tiled_masked_lse",
    "tiled_rule_lse",
    "tiled_rule_sum",
    "tiled_siglip_loss",
]
