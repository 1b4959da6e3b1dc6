"""Scale: exact losses at batch sizes beyond memory, as wrappers around any loss or model.

* ``tiled`` — CLIP/SigLIP in tiles, memory O(N·d + tile²) (S-INFCL);
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

__all__ = [
    "TILED",
    "CachedEmbeddings",
    "GatherLoss",
    "ScaleConfig",
    "SigLIPRingLoss",
    "TiledLoss",
    "all_gather_with_grad",
    "backward_through_chunks",
    "embed_in_chunks",
    "is_distributed",
    "siglip_ring_loss",
    "spawn_gloo",
    "tiled_clip_loss",
    "tiled_siglip_loss",
]
