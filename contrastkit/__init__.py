"""contrastkit — train, scale, evaluate and compare contrastive and multimodal models.

Subpackages, in data-flow order: ``core`` (configs, registries, checks, I/O) → ``data`` (pair
sets keyed by modality) → ``models`` (towers, dual encoder) → ``losses`` (the objective zoo) →
``scale`` (memory/distributed wrappers around any loss) → ``train`` → ``evaluation`` →
``studies`` and ``curation`` (data filters). Import what you need from each; importing
``contrastkit`` itself does no work.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
