"""torchrun: the same scripts as one process per GPU (DistributedDataParallel), batch_size staying the
global batch. Without torchrun every helper here is a no-op for rank 0 of a world of 1."""
import builtins
import contextlib
import functools
import os

import torch
from tqdm import tqdm

from config import UserError


def setup_distributed(device_name="auto"):
    """(rank, world, local_rank, device) from torchrun's environment; joins the process group (nccl on GPUs,
    gloo on CPU) and silences print() and tqdm on ranks > 0. Without torchrun: (0, 1, 0, device)."""
    import runs
    device = runs.get_device(device_name)
    if "RANK" not in os.environ:
        return 0, 1, 0, device
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if torch.distributed.is_initialized():
        return rank, world, local_rank, device
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl", device_id=device)
    elif device.type == "cpu":
        torch.distributed.init_process_group("gloo")
    else:
        raise UserError(f"distributed training runs on CUDA (nccl) or CPU (gloo), not on '{device}'")
    if rank != 0:
        builtins.print = lambda *args, **kwargs: None
        tqdm.__init__ = functools.partialmethod(tqdm.__init__, disable=True)
    return rank, world, local_rank, device


def is_main():
    """Rank 0, or a single process: the one that writes files."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def barrier():
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (decodes and caches the data), the other ranks then read its files."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def shard(indices, rank, world, batch_size=None):
    """Every world-th item from `rank`; with batch_size (the global batch) the tail that fills no whole batch
    is dropped first, so step k of all ranks together trains on batch k of a single-process run."""
    if batch_size is not None:
        if batch_size % world:
            raise UserError(f"batch_size {batch_size} (the global batch) must be divisible by the {world} processes")
        indices = indices[:len(indices) // batch_size * batch_size]
    return indices[rank::world]


def all_gather_shards(x, world):
    """Undo shard() without batch_size: every rank's results, interleaved into the unsharded order."""
    if world == 1:
        return x
    parts = [None] * world
    torch.distributed.all_gather_object(parts, x)
    out = x.new_empty((sum(len(p) for p in parts), *next((p.shape[1:] for p in parts if len(p)), x.shape[1:])))
    for r, p in enumerate(parts):
        if len(p):
            out[r::world] = p
    return out


def all_reduce_sum(values, device):
    if not torch.distributed.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def broadcast_buffers(model):
    """Rank 0's BatchNorm statistics on every rank, so that all ranks evaluate the model that is saved."""
    if torch.distributed.is_initialized():
        for b in model.buffers():
            torch.distributed.broadcast(b, 0)


def wrap_ddp(model, world, device):
    """DDP under torchrun, else the model itself (checkpoints always hold the plain model)."""
    ids = [device.index] if device.type == "cuda" else None
    return model if world == 1 else torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def cleanup_distributed():
    """Leave the process group together: a rank that tears gloo down while rank 0 writes can abort."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
