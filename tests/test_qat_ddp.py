"""Data-parallel QAT: two CPU processes under torchrun (gloo) step with one process's gradient.

Run as a script (``torchrun ... tests/test_qat_ddp.py AT qat ...``), this file is the QAT command
interrupted (Ctrl-C) on every rank as step ``AT`` begins, as a killed run would stop (``AT`` 0:
never), saving each rank's first gradient where ``$EDGE_CONVNEXT_TEST_GRADS`` says.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_convnext import cli

STEPS, BATCH, INTERRUPT_AT = 6, 4, 5
# DDP averages the gradients over the ranks; one process takes the gradient of the whole batch:
# equal up to float32 summation order (measured: 1e-10 of a largest gradient of 2e-5). The
# trajectories after that are not comparable: at lr 1e-6 AdamW moves every weight by about
# +-lr whatever its gradient's size, so weights whose gradient is rounding noise step either way
# (AMD EPYC: 90% of the weights 5e-6 apart after six steps, the losses 6% apart).
GRAD_RTOL = 1e-4
GRADS_ENV = "EDGE_CONVNEXT_TEST_GRADS"  # under torchrun: where each rank saves its first gradient


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


def _torchrun(
    program: list[str], args: list[str], env: dict | None = None
) -> subprocess.CompletedProcess:
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
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
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


def _first_gradients(run) -> dict:
    return {
        n: p.grad.detach().clone() for n, p in run.student.named_parameters() if p.grad is not None
    }


def test_two_processes_train_like_one_and_resume_under_torchrun(
    tiny_checkpoints, calib_dir, tmp_path, one_thread, monkeypatch
):
    """Each rank steps with the gradient one process computes on the whole batch, and a run
    killed under torchrun and resumed ends where an uninterrupted torchrun run does."""
    from conftest import require_toolchain

    require_toolchain("executorch")
    import torch

    from edge_convnext.quantize import qat

    checkpoint = tiny_checkpoints["convnextv2-tiny-1k-224"]
    single, grads = tmp_path / "single.pt", {}
    real_step = qat.QATRun.step

    def recording_step(run, *args, **kwargs):
        loss = real_step(run, *args, **kwargs)
        if run.step_index == 1:
            grads.update(_first_gradients(run))
        return loss

    monkeypatch.setattr(qat.QATRun, "step", recording_step)
    assert cli.main(_qat_args(checkpoint, calib_dir, single)) == 0
    monkeypatch.undo()

    straight = tmp_path / "straight.pt"
    env = {GRADS_ENV: str(tmp_path / "grads")}
    run = _torchrun([__file__, "0"], _qat_args(checkpoint, calib_dir, straight), env)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"grads.{rank}.pt") for rank in (0, 1)]
    assert set(ranks[0]) == set(ranks[1]) == set(grads)
    for name, gradient in grads.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), name  # every rank takes one step
        scale = float(gradient.abs().max()) or 1.0
        apart = float((ranks[0][name] - gradient).abs().max())
        assert apart <= GRAD_RTOL * scale, (name, apart, scale)

    ddp = tmp_path / "ddp.pt"
    interrupted = _torchrun([__file__, str(INTERRUPT_AT)], _qat_args(checkpoint, calib_dir, ddp))
    assert interrupted.returncode != 0, interrupted.stderr[-3000:]
    assert qat.load_checkpoint(ddp)["step"] == INTERRUPT_AT - 1  # the last checkpoint
    resumed = _torchrun(
        ["-m", "edge_convnext"], [*_qat_args(checkpoint, calib_dir, ddp), "--resume"]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {STEPS}," in resumed.stdout  # printed once, by rank 0

    one, two, whole = (qat.load_checkpoint(path) for path in (single, ddp, straight))
    assert one["step"] == two["step"] == whole["step"] == STEPS
    # The loss of the global batch is the mean of the ranks' slice means: one process's loss.
    np.testing.assert_allclose(two["losses"][0], one["losses"][0], rtol=1e-4)
    assert two["losses"] == whole["losses"]
    for key, value in whole["student"].items():
        assert torch.equal(two["student"][key], value), key


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


if __name__ == "__main__":  # under torchrun: Ctrl-C on every rank as step AT begins (0: never)
    import torch

    from edge_convnext.quantize import qat

    at = int(sys.argv[1])
    real_step = qat.QATRun.step

    def instrumented_step(run, *args, **kwargs):
        if run.step_index == at - 1:
            raise KeyboardInterrupt
        loss = real_step(run, *args, **kwargs)
        if run.step_index == 1 and os.environ.get(GRADS_ENV):
            rank = torch.distributed.get_rank()
            torch.save(_first_gradients(run), f"{os.environ[GRADS_ENV]}.{rank}.pt")
        return loss

    qat.QATRun.step = instrumented_step
    sys.exit(cli.main(sys.argv[2:]))
