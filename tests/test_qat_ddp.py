"""Data-parallel QAT: two CPU processes under torchrun (gloo) train as one process does.

Run as a script (``torchrun ... tests/test_qat_ddp.py AT qat ...``), this file is the QAT command
interrupted (Ctrl-C) on every rank as step ``AT`` begins, as a killed run would stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_convnext import cli

STEPS, BATCH, INTERRUPT_AT = 6, 4, 5
# The loss of the global batch is the mean over the ranks of their slices' means, and DDP
# averages the gradients: equal to one process up to float32 summation order.
# Measured on 2 CPU cores: losses within 3e-6 relative, weights 1 ulp (4e-9) apart after two
# steps moved them 2e-6 (lr 1e-6).
LOSS_RTOL, WEIGHT_FRACTION = 1e-4, 0.01


def _qat_args(checkpoint: Path, data: Path, out: Path) -> list[str]:
    return [
        "qat",
        str(checkpoint),
        "--target",
        "executorch",
        "--data",
        str(data),
        "--steps",
        str(STEPS),
        "--batch-size",
        str(BATCH),
        "--images",
        "6",
        "--checkpoint-every",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]


def _torchrun(program: list[str], args: list[str]) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2`` of ``program args``, on a free port of 127.0.0.1."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        *program,
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Its own process group, so that a timeout ends the workers too, not only torchrun.
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture
def one_thread():
    """torchrun gives each process one intra-op thread; the single-process run gets the same,
    so both start from identically calibrated ranges (float sums depend on the thread count)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_processes_train_like_one_and_resume_under_torchrun(
    tiny_checkpoints, calib_dir, tmp_path, one_thread
):
    from conftest import require_toolchain

    require_toolchain("executorch")
    import torch

    from edge_convnext.quantize import qat

    checkpoint = tiny_checkpoints["convnextv2-tiny-1k-224"]
    single = tmp_path / "single.pt"
    assert cli.main(_qat_args(checkpoint, calib_dir, single)) == 0

    ddp = tmp_path / "ddp.pt"
    interrupted = _torchrun([__file__, str(INTERRUPT_AT)], _qat_args(checkpoint, calib_dir, ddp))
    assert interrupted.returncode != 0, interrupted.stderr[-3000:]
    assert qat.load_checkpoint(ddp)["step"] == INTERRUPT_AT - 1  # the last checkpoint
    shutil.copy(ddp, tmp_path / "at-interrupt.pt")

    resumed = _torchrun(
        ["-m", "edge_convnext"], [*_qat_args(checkpoint, calib_dir, ddp), "--resume"]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {STEPS}," in resumed.stdout  # printed once, by rank 0

    one, two = qat.load_checkpoint(single), qat.load_checkpoint(ddp)
    assert one["step"] == two["step"] == STEPS
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=LOSS_RTOL)
    # Weights: two processes land where one does, up to a small fraction of how far the last
    # two steps moved them (the fraction, not a fixed atol, keeps the check meaningful).
    at_interrupt = qat.load_checkpoint(tmp_path / "at-interrupt.pt")["student"]
    apart = moved = 0.0
    for key, value in one["student"].items():
        if not value.is_floating_point():
            assert torch.equal(two["student"][key], value), key
            continue
        apart = max(apart, float((two["student"][key] - value).abs().max()))
        moved = max(moved, float((value - at_interrupt[key]).abs().max()))
    assert apart <= WEIGHT_FRACTION * moved, (apart, moved)


def test_batch_that_does_not_split_over_the_processes_is_refused(
    tiny_checkpoints, calib_dir, tmp_path
):
    checkpoint = tiny_checkpoints["convnextv2-tiny-1k-224"]
    args = _qat_args(checkpoint, calib_dir, tmp_path / "odd.pt")
    args[args.index("--batch-size") + 1] = "3"
    run = _torchrun(["-m", "edge_convnext"], args)
    assert run.returncode != 0
    message = "edge-convnext: error: --batch-size 3 does not split over 2 processes"
    assert [line.startswith(message) for line in run.stderr.splitlines()].count(True) == 2
    assert not (tmp_path / "odd.pt").exists()


def test_backend_outside_torchrun_is_a_usage_error(tiny_checkpoints, calib_dir, tmp_path, capsys):
    args = [*_qat_args(tiny_checkpoints["convnextv2-tiny-1k-224"], calib_dir, tmp_path / "x.pt")]
    assert cli.main([*args, "--backend", "gloo"]) == 2
    assert "only under torchrun" in capsys.readouterr().err


if __name__ == "__main__":  # under torchrun: Ctrl-C on every rank as step AT begins
    from edge_convnext.quantize import qat

    at = int(sys.argv[1])
    real_step = qat.QATRun.step

    def interrupted_step(run, *args, **kwargs):
        if run.step_index == at - 1:
            raise KeyboardInterrupt
        return real_step(run, *args, **kwargs)

    qat.QATRun.step = interrupted_step
    sys.exit(cli.main(sys.argv[2:]))
