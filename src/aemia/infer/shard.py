"""Which cases this process handles: a deterministic split by sorted case id, as nnU-Net's ``-num_parts/-part_id``.

Part ``K`` of ``N`` takes the cases at positions ``K, K + N, K + 2N, ...`` of the case ids sorted as strings
(round-robin, so parts get similar mixes of case sizes). The split depends only on the case ids, so a SLURM job
array (``--part-id $SLURM_ARRAY_TASK_ID --num-parts $SLURM_ARRAY_TASK_COUNT``) or several machines given the same
folder agree on it without talking to each other. Under ``torchrun`` (``WORLD_SIZE > 1`` in the environment) the
part is the process's ``RANK`` of ``WORLD_SIZE`` unless given; :func:`wait_for_all_parts` then lets rank 0 merge
once every rank has finished (gloo barrier, no data sent).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from aemia.errors import InputError


@dataclass(frozen=True)
class Shard:
    """Part ``part_id`` (0-based) of ``num_parts``; ``torchrun`` is true when taken from the environment."""

    part_id: int = 0
    num_parts: int = 1
    torchrun: bool = False

    def __post_init__(self) -> None:
        if self.num_parts < 1:
            raise InputError(None, f"--num-parts must be at least 1, got {self.num_parts}")
        if not 0 <= self.part_id < self.num_parts:
            raise InputError(None, f"--part-id must be in 0..{self.num_parts - 1} for --num-parts "
                                   f"{self.num_parts}, got {self.part_id}")

    @classmethod
    def resolve(cls, num_parts: int | None = None, part_id: int | None = None) -> "Shard":
        """The explicit ``--num-parts/--part-id`` if given, else ``RANK``/``WORLD_SIZE`` under torchrun, else 1 part."""
        if num_parts is None and part_id is None:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            if world > 1:
                return cls(int(os.environ.get("RANK", "0")), world, torchrun=True)
            return cls()
        if num_parts is None or part_id is None:
            raise InputError(None, "--num-parts and --part-id go together (e.g. --num-parts 4 --part-id 0)")
        return cls(part_id, num_parts)

    @property
    def name(self) -> str:
        return f"part {self.part_id} of {self.num_parts}"

    @property
    def merges(self) -> bool:
        """Whether this process writes the summary at the end: the only part, or rank 0 under torchrun."""
        return self.num_parts == 1 or (self.torchrun and self.part_id == 0)

    def select(self, case_ids: Sequence[str]) -> list[str]:
        """This part's case ids, in sorted order."""
        if len(set(case_ids)) != len(case_ids):
            dup = sorted({c for c in case_ids if list(case_ids).count(c) > 1})
            raise InputError(None, f"case ids must be unique to split the cases, repeated: {dup[:5]}")
        return sorted(case_ids)[self.part_id :: self.num_parts]


def local_processes() -> int:
    """Processes of this job on this machine (torchrun's ``LOCAL_WORLD_SIZE``, else 1)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def local_device(device: str) -> str:
    """Under torchrun, a bare ``cuda`` (or ``auto`` with CUDA present) means this rank's GPU ``cuda:LOCAL_RANK``."""
    if "LOCAL_RANK" not in os.environ or device not in ("cuda", "auto"):
        return device
    import torch

    if device == "auto" and not torch.cuda.is_available():
        return device
    return f"cuda:{int(os.environ['LOCAL_RANK']) % max(1, torch.cuda.device_count())}"


def wait_for_all_parts(shard: Shard, timeout_hours: float = 48.0) -> None:
    """Under torchrun: block until every rank got here (a gloo barrier). Otherwise nothing happens."""
    if not shard.torchrun:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=timeout_hours))
    dist.barrier()
    dist.destroy_process_group()
