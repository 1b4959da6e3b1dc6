"""Scale: exact losses at batch sizes beyond memory, as wrappers around any loss or model.

* ``tiled`` — CLIP/SigLIP in tiles, memory O(N·d + tile²) (S-INFCL);
* ``grad_cache`` — two-pass gradient caching: contrastive batch ≫ what the towers fit (S-GRADCACHE);
* ``distributed`` — torch.distributed gathers with correct gradients, SigLIP ring (S-GATHER,
  S-SIGLIP-RING).
"""

from contrastkit.scale.config import ScaleConfig
from contrastkit.scale.grad_cache import CachedEmbeddings, backward_through_chunks, embed_in_chunks
from contrastkit.scale.tiled import TILED, TiledLoss, tiled_clip_loss, tiled_siglip_loss

__all__ = [
    "TILED",
    "CachedEmbeddings",
    "ScaleConfig",
    "TiledLoss",
    "backward_through_chunks",
    "embed_in_chunks",
    "tiled_clip_loss",
    "tiled_siglip_loss",
]
