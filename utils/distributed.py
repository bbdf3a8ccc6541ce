"""Data-parallel training across processes with torch.distributed (torchrun + DDP): joining
the process group, which process writes, the per-rank share of every epoch, and gathering
evaluation predictions. With one process every function here is a no-op or the identity."""
import contextlib
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from utils.device import resolve_device


# ---------------------------------------------------------------- the process group
def init_distributed(device_name: str = "auto") -> torch.device:
    """Join torchrun's process group when it started several processes (WORLD_SIZE > 1) and
    return this process's device: `auto` and `cuda` become cuda:<LOCAL_RANK>, one GPU per
    process. NCCL joins GPUs, gloo CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return resolve_device(device_name)
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_name in ("auto", "cuda") and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = resolve_device(device_name)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # object collectives stage through the current device
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0 alone writes files and logs below WARNING."""
    return rank() == 0


def is_local_main() -> bool:
    """The first process on its machine (torchrun's LOCAL_RANK 0): it builds the machine's caches."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def gather_objects(value) -> list:
    """Each rank's value, in rank order, on every rank (a barrier; [value] in one process)."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def sum_floats(values: list[float], device: torch.device) -> list[float]:
    """Host numbers added over all ranks, in float64 (unchanged in one process)."""
    if not dist.is_initialized():
        return values
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return totals.tolist()


def seed_rank(seed: int, epoch: int) -> None:
    """Ranks other than 0 draw dropout from their own stream, reseeded every epoch so that a
    resumed run repeats it; rank 0 keeps the single-process stream (saved in <session>_last.pt)."""
    if rank() > 0:
        torch.manual_seed(int(np.random.SeedSequence([seed, epoch, rank()]).generate_state(1)[0]))


# ---------------------------------------------------------------- the model
def wrap_model(model: torch.nn.Module, device: torch.device, find_unused_parameters: bool):
    """DistributedDataParallel around `model` with several processes, else None. DDP starts
    by broadcasting rank 0's weights, so every rank trains the same model."""
    if world_size() == 1:
        return None
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)


def gradient_sync(ddp, sync: bool):
    """Gradients are averaged across ranks only on the last micro-batch of an accumulation
    cycle (model.no_sync() on the others): one all-reduce per optimizer step."""
    return ddp.no_sync() if ddp is not None and not sync else contextlib.nullcontext()


# ---------------------------------------------------------------- the data
class DistributedBucketSampler(torch.utils.data.Sampler):
    """Training: this rank's shards of the single-process epoch at batch size world x b.

    `base` (a BucketBatchSampler or RandomBatchSampler built with batch size world x b) draws
    the same global batches on every rank, from the seed and epoch. Each global batch is cut
    into `world` contiguous shards and rank r takes shard r, so within an epoch the ranks
    together see every utterance exactly once, all ranks take the same number of steps, and
    the shards of a length-sorted bucket hold similar lengths. A global batch with fewer than
    `world` utterances (at most one per epoch, the remainder) leaves some ranks an empty shard:
    they get a copy of the batch's first utterance with loss scale 0, which keeps them in step
    (the 2023 contrastive terms' collectives included: models.objectives.stand_in_loss) without
    changing any gradient."""

    def __init__(self, base, rank: int, world: int):
        self.base, self.rank, self.world = base, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def shards(self) -> list[tuple[list[int], float]]:
        """(indices, loss scale) per step. The scale, world x shard size / global batch size,
        makes the ranks' gradients, averaged by DDP, those of the global batch's mean loss."""
        shards = []
        for batch in self.base.batches():
            shard = np.array_split(np.asarray(batch), self.world)[self.rank].tolist()
            shards.append((shard, self.world * len(shard) / len(batch)) if shard else (batch[:1], 0.0))
        return shards

    def batches(self) -> list[list[int]]:
        return [indices for indices, _ in self.shards()]

    def loss_scales(self) -> list[float]:
        return [scale for _, scale in self.shards()]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        return len(self.base)


class RoundRobinBatchSampler(torch.utils.data.Sampler):
    """Evaluation: the single-process batches dealt to the ranks in turn (rank r takes batches
    r, r + world, ...), so each batch is computed exactly as one process would; no utterance
    is repeated, and the ranks' batch counts differ by at most one (evaluation needs no
    lockstep)."""

    def __init__(self, base, rank: int, world: int):
        self.base, self.rank, self.world = base, rank, world

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def batches(self) -> list[list[int]]:
        return self.base.batches()[self.rank::self.world]

    def __iter__(self):
        return iter(self.batches())

    def __len__(self):
        return len(self.batches())


def loss_scales(sampler) -> list[float]:
    """Per micro-batch factor on the loss: the distributed sampler's, 1 in a single process."""
    if isinstance(sampler, DistributedBucketSampler):
        return sampler.loss_scales()
    return [1.0] * len(sampler)


def gather_predictions(names, labels, probs):
    """Every rank's (names, labels, probabilities) merged on every rank: one row per utterance
    (a name seen twice is kept once), ordered by name. -> names, labels, predictions, probs."""
    parts = [(list(names), np.asarray(labels), np.asarray(probs))]
    if world_size() > 1:
        parts = [None] * world_size()
        dist.all_gather_object(parts, (list(names), np.asarray(labels), np.asarray(probs)))
    rows = {}
    for part_names, part_labels, part_probs in parts:
        rows.update(zip(part_names, zip(part_labels, part_probs)))
    order = sorted(rows)
    labels = np.array([rows[name][0] for name in order], dtype=int)
    probs = np.stack([rows[name][1] for name in order])
    return order, labels, probs.argmax(axis=1), probs
