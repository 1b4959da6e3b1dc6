"""Worker that tests/train/test_torchrun.py launches with ``torchrun`` (not a test module itself):
one epoch of this rank's WebDataset stream through ``num_workers`` loader workers, the sample keys
written to ``OUT/rank<R>.json`` with the rank, world size and node (``GROUP_RANK``) torchrun gave.

    python -m torch.distributed.run ... tests/train/torchrun_keys.py SHARD_DIR OUT WORKERS
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # `tests` importable from a script

from contrastkit.train.distributed import init_from_env
from tests.data.test_shard_stream import _epoch_keys


def main(shard_dir: str, out_dir: str, workers: int) -> None:
    ctx = init_from_env(torch.device("cpu"))  # the trainer's own join: RANK/WORLD_SIZE from torchrun
    keys = _epoch_keys(shard_dir, ctx.rank, ctx.world, workers)
    record = {
        "rank": ctx.rank,
        "world": ctx.world,
        "node": int(os.environ["GROUP_RANK"]),
        "local_rank": int(os.environ["LOCAL_RANK"]),
        "keys": keys,
    }
    path = Path(out_dir) / f"rank{ctx.rank}.json"
    path.with_suffix(".tmp").write_text(json.dumps(record))
    os.replace(path.with_suffix(".tmp"), path)
    ctx.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
