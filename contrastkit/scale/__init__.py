"""Scale: exact losses at batch sizes beyond memory, as wrappers around any loss or model.

* ``tiled`` — CLIP/SigLIP in tiles, memory O(N·d + tile²) (S-INFCL);
* ``tiled_family`` / ``tiled_zoo`` — one masked tiled log-sum-exp and the InfoNCE family through it
  (NT-Xent, SupCon, DCL/DCLW, multi-positive, InfoNCE, AM/AAM-NT-Xent, HN-NCE);
* ``grad_cache`` — two-pass gradient caching: contrastive batch ≫ what the towers fit (S-GRADCACHE);
* ``distributed`` — torch.distributed gathers with correct gradients, SigLIP ring (S-GATHER,
  S-SIGLIP-RING).
"""

from contrastkit.scale.config import ScaleConfig
from contrastkit.scale.distributed import (
    GatherLoss,
    SigLIPRingLoss,
    all_gather_with_grad,
    is_distributed,
    siglip_ring_loss,
)
from contrastkit.scale.grad_cache import CachedEmbeddings, backward_through_chunks, embed_in_chunks
from contrastkit.scale.launch import spawn_gloo
from contrastkit.scale.tiled import TILED, TiledLoss, tiled_clip_loss, tiled_siglip_loss
from contrastkit.scale.tiled_family import positive_logit_sums, tiled_masked_lse
from contrastkit.scale.tiled_zoo import TILED_FAMILY

__all__ = [
    "TILED",
    "TILED_FAMILY",
    "CachedEmbeddings",
    "GatherLoss",
    "ScaleConfig",
    "SigLIPRingLoss",
    "TiledLoss",
    "all_gather_with_grad",
    "backward_through_chunks",
    "embed_in_chunks",
    "is_distributed",
    "positive_logit_sums",
    "siglip_ring_loss",
    "spawn_gloo",
    "tiled_clip_loss",
    "tiled_masked_lse",
    "tiled_siglip_loss",
]
