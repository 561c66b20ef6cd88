"""Data-parallel QAT under ``torchrun``: one process per device, each on its slice of the batch.

``torchrun --nproc-per-node N -m edge_convnext qat ...`` sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``; :func:`session` then joins the process group (``gloo`` on CPU, ``nccl`` on CUDA,
each rank on ``cuda:LOCAL_RANK``). The global batch is the one a single process would draw, cut
into equal slices; DistributedDataParallel averages the gradients, so every rank takes the step
the single process takes on the whole batch (up to fp32 summation order).

Rank 0 is the only one that reads the checkpoint, decodes the training images, calibrates and
writes: what it has is broadcast (:meth:`Group.share`), so every rank starts from the same bytes
and a checkpoint records the images actually trained on. Torch side.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch

from edge_convnext.errors import EdgeConvnextError, UsageError

BACKENDS = ("gloo", "nccl")
# Rank 0 balances, GPTQ-rounds and calibrates while the others wait in a broadcast: minutes for
# the full model on a CPU, past torch's 10-minute default for nccl.
TIMEOUT = datetime.timedelta(hours=1)

T = TypeVar("T")


@dataclass(frozen=True)
class Group:
    """The processes training together; the default is one process, no communication."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: reads the checkpoint, decodes images, calibrates, writes, shows progress."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.backend is not None

    def check_batch(self, batch_size: int) -> None:
        """Refuse a global batch that does not cut into equal slices (the mean would change)."""
        if batch_size % self.world_size:
            raise UsageError(
                f"--batch-size {batch_size} does not split over {self.world_size} processes; "
                f"use a multiple of {self.world_size} (it is the global batch)"
            )

    def share(self, make: Callable[[], T]) -> T:
        """``make()`` on rank 0; its result, or the error it raised, on every rank."""
        if not self.parallel:
            return make()
        box: list = [None]
        if self.is_main:
            try:
                box[0] = (True, make())
            except EdgeConvnextError as error:  # every rank stops with the same message
                box[0] = (False, error)
        torch.distributed.broadcast_object_list(box, src=0, device=self._comm_device())
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This rank's slice of the global batch."""
        size = len(batch) // self.world_size
        return batch[self.rank * size : (self.rank + 1) * size]

    def mean(self, value: torch.Tensor) -> float:
        """The mean of ``value`` (a scalar) over the ranks: the loss of the global batch."""
        if not self.parallel:
            return float(value)
        total = value.detach().to(self._comm_device(), torch.float32).clone()
        torch.distributed.all_reduce(total)
        return float(total) / self.world_size

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` with its gradients averaged over the ranks at ``backward``.

        Buffers are synced from rank 0 once, not before every step: the only ones are the
        fake-quant ranges and flags, fixed while training.
        """
        if not self.parallel:
            return module
        from torch.nn.parallel import DistributedDataParallel

        # Autograd gives the (2, 7) kernels of the split depthwise convolutions gradients in
        # another memory layout than DDP's buckets: DDP copies them (a few KB a step) and warns
        # on every rank that this "may impair performance". Measured, it does not matter.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(
            module, device_ids=ids, forward_sync_buffers=False, gradient_as_bucket_view=True
        )

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


SINGLE = Group()


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another env:// launcher)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


@contextlib.contextmanager
def session(device: str = "cpu", backend: str | None = None) -> Iterator[Group]:
    """The :class:`Group` of this process: joined (and left at the end) under ``torchrun``.

    Raises:
        UsageError: ``backend`` without torchrun, nccl without CUDA, or a CUDA index under
            torchrun (each rank takes ``cuda:LOCAL_RANK``).
    """
    if not launched():
        if backend is not None:
            raise UsageError(f"--backend {backend}: only under torchrun (data-parallel QAT)")
        yield Group(device=torch.device(device))
        return
    resolved, backend = _device_and_backend(torch.device(device), backend)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    torch.distributed.init_process_group(
        backend, timeout=TIMEOUT, device_id=resolved if backend == "nccl" else None
    )
    try:
        yield Group(
            torch.distributed.get_rank(), torch.distributed.get_world_size(), resolved, backend
        )
    finally:
        torch.distributed.destroy_process_group()


def _device_and_backend(device: torch.device, backend: str | None) -> tuple[torch.device, str]:
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: data-parallel QAT runs on cpu or cuda")
    if device.type == "cuda":
        if device.index is not None:
            raise UsageError(
                f"--device {device}: under torchrun each process takes cuda:LOCAL_RANK; "
                "pass --device cuda"
            )
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "nccl" and device.type != "cuda":
        raise UsageError("--backend nccl needs --device cuda; use gloo on cpu")
    return device, backend
