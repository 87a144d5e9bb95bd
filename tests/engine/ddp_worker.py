"""One process of a two-process training run, for ``tests/test_train.py``.

Run under ``torchrun`` as a script (``python -m torch.distributed.run --nproc_per_node 2
tests/engine/ddp_worker.py OUT --set ...``): each process trains twice through
``fcos_fast.train.main``, the code of ``python -m fcos_fast.train`` (the process group
joined from torchrun's environment, ``DistributedDataParallel``, each process its shard
of every batch), and writes its final weights to ``OUT/<run>/weights<rank>.pt`` (the
checkpoint holds rank 0's alone):

* ``OUT/synced``: the run as the command does it;
* ``OUT/unsynced``: the negative control, the same run with ``DistributedDataParallel``
  replaced by the bare model (no gradient all-reduce), as a trainer that forgot the wrap
  would train. Both runs share one process group.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from fcos_fast import train
from fcos_fast.engine.distributed import cleanup
from fcos_fast.engine.trainer import Trainer


def main(argv: list[str]) -> int:
    out, overrides = Path(argv[0]), argv[1:]
    rank = int(os.environ["RANK"])
    run_dir: list[Path] = []
    train_loop = Trainer.train

    def train_and_save(self: Trainer) -> None:
        train_loop(self)
        model = getattr(self.model, "module", self.model)
        torch.save(model.state_dict(), run_dir[-1] / f"weights{rank}.pt")

    Trainer.train = train_and_save
    ddp = torch.nn.parallel.DistributedDataParallel
    train.cleanup = lambda: None  # the second run reuses the process group
    try:
        for name, wrap in (("synced", ddp), ("unsynced", lambda module, **kwargs: module)):
            torch.nn.parallel.DistributedDataParallel = wrap
            run_dir.append(out / name)
            code = train.main(["--out", str(run_dir[-1]), "--no-progress", *overrides])
            if code:
                return code
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
