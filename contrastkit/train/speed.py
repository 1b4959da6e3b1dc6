"""CPU/GPU speed options of a training run: compiled towers and channels-last image towers.

Spec: :func:`apply_speed_options` (called by :func:`~contrastkit.train.session.build_session` with
the run's ``train.compile`` and ``train.channels_last``) changes *how* a model computes, never
*what* it stores:

* ``train.compile`` — each tower's forward is compiled with ``torch.compile`` through
  :meth:`torch.nn.Module.compile`, which compiles the module's call in place: the module object,
  its parameters and its ``state_dict`` keys stay those of the eager model (no ``_orig_mod.``
  prefix), so checkpoints load into an uncompiled model and the reverse. Inductor needs a C++
  compiler on CPU; without one the run warns (:data:`NO_COMPILER`) and trains uncompiled.
  Compiled kernels fuse and reorder float operations: the first step's loss agrees with the
  eager run's to float32 rounding, later ones drift apart as under any change of summation order
  (tests/train/test_speed_options.py), while a compiled run is still exactly resumable (the same
  kernels run after the resume).
* ``train.channels_last`` — image towers (4-d weights) are stored in the channels-last memory
  format, which CPU (oneDNN) and GPU convolutions run natively; the first convolution converts its
  input. Float rounding changes as with ``compile``. Checkpoints are written contiguous
  (:mod:`contrastkit.train.checkpoint`) and load into either format; on load, the optimizer's
  moments get their weights' strides back (the fused AdamW kernel needs them alike).

The optimizer's implementation (``optim.impl``) is :func:`contrastkit.train.optim.build_optimizer`'s.
What each option costs or saves on the Shapes demo is measured in docs/performance.md
("The demo's step", ``benchmarks/demo_step.py``).
"""

from __future__ import annotations

import os
import shutil
import warnings

import torch
from torch import nn

from contrastkit.models.dual_encoder import DualEncoder
from contrastkit.models.towers import ImageTower

__all__ = ["NO_COMPILER", "apply_speed_options", "compiler_missing"]

NO_COMPILER = (
    "train.compile=true needs a C++ compiler for torch.compile on CPU (none found: set CXX or install "
    "g++); training without compiling"
)


def compiler_missing(device: torch.device) -> bool:
    """Whether ``torch.compile`` would fail for lack of a C++ compiler: inductor builds its CPU
    kernels with ``$CXX`` (default ``g++``/``c++``); CUDA kernels are Triton's, but the CPU-side
    wrapper still needs one, so the check is the same on every device."""
    del device  # kept in the signature: a backend with no compiler needs may be added later
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["g++", "c++", "clang++"]
    return not any(shutil.which(n) for n in names)


def _image_modules(model: nn.Module) -> list[nn.Module]:
    """Every image tower in ``model``, momentum copies included (they run the same convolutions)."""
    return [m for m in model.modules() if isinstance(m, ImageTower)]


def apply_speed_options(
    model: DualEncoder, *, compile_towers: bool, channels_last: bool, device: torch.device
) -> bool:
    """Apply ``train.channels_last`` and ``train.compile`` to ``model`` in place (after it is on
    ``device``, before the optimizer holds its parameters); returns whether the towers were compiled.

    ``channels_last`` re-strides 4-d parameters in place (``Module.to`` keeps the parameter objects),
    so an optimizer built before or after sees the same tensors."""
    if channels_last:
        for tower in _image_modules(model):
            tower.to(memory_format=torch.channels_last)
    if not compile_towers:
        return False
    if compiler_missing(device):
        warnings.warn(NO_COMPILER, stacklevel=2)
        return False
    for tower in model.towers.values():
        tower.compile()  # compiles the call in place: state_dict keys unchanged
    return True
