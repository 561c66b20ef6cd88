"""The curve behind #16's QAT item: weight-only 4-bit QAT of Core ML `w4` from its GPTQ start.

Eager fake quantization (straight-through rounding on the `w4` grids: int4 blocks of 32 with
learned scales, int8 downsampling convs), label-free distillation from the fp32 model (KL, as
`edge-convnext qat`), flips only. Training photos: the first half of the picked photos (GPTQ
calibrates on 48 of them); SNR/KL against fp32 on the other half, every 50 steps. Not a product
path: it measures whether QAT beats the best PTQ by 3 dB here (it did not: bench/FINDINGS.md).

    python bench/qat_4bit_curve.py --seed-model convnext-tiny-224 --steps 400 --lr 2e-5
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.utils.parametrize as parametrize
from torch import nn

from edge_convnext import contracts, metrics
from edge_convnext.quantize import calibration, gptq, recipes
from edge_convnext.quantize.ptq import contract_batches, contract_tensor
from edge_convnext.quantize.qat import batch_for_step, distillation_loss
from edge_convnext.targets.lowering import with_contract
from edge_convnext.testing import nontrivial_model


class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class FakeQuantWeight(nn.Module):
    """``clamp(round(w / s), -q, q) * s`` per group of the grid, ``s`` learned (LSQ-style)."""

    def __init__(self, weight: torch.Tensor, grid):
        super().__init__()
        flat = weight.detach().reshape(weight.shape[0], -1)
        self.shape, self.qmax = weight.shape, grid.qmax
        self.group = grid.group_size or flat.shape[1]
        self.log_scale = nn.Parameter(grid.derived_scales(flat).log())

    def forward(self, weight):
        groups = weight.reshape(weight.shape[0], -1, self.group)
        scale = self.log_scale.exp()[..., None]
        levels = torch.clamp(RoundSTE.apply(groups / scale), -self.qmax, self.qmax)
        return (levels * scale).reshape(self.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed-model", default="convnext-tiny-224")
    parser.add_argument("--data", default="../shared/imagenet-sample/val")
    parser.add_argument("--images", type=int, default=200, help="half train, half held out")
    parser.add_argument("--recipe", default="w4", choices=["w4"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5, help="Adam, weights and scales")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = nontrivial_model(args.seed_model, 0)
    contract = contracts.FLOAT_NCHW
    crops = calibration.load(args.data, args.images, loaded.preprocessing, seed=0).crops
    train, held = crops[: len(crops) // 2], crops[len(crops) // 2 :]
    teacher = with_contract(loaded, contract).eval()
    held_out = contract_tensor(held, contract, loaded.preprocessing)
    with torch.no_grad():
        reference = torch.cat([teacher(b) for b in held_out.split(25)]).numpy()

    def score(model) -> str:
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(b) for b in held_out.split(25)]).numpy()
        snr, kl = metrics.snr_db(logits, reference), metrics.kl_mean(logits, reference)
        return f"held-out SNR {snr:.2f} dB, KL {kl:.3e}"

    recipe = recipes.get(args.recipe)
    batches = contract_batches(train[:48], contract, loaded.preprocessing)
    student = copy.deepcopy(gptq.Rounding(teacher, recipe, batches).apply())
    student.requires_grad_(False)
    trained = []
    for name, grid in gptq.layer_grids(student, recipe).items():
        layer = gptq.gptq_layers(student, (name,))[name]
        parametrize.register_parametrization(layer, "weight", FakeQuantWeight(layer.weight, grid))
        trained += [
            layer.parametrizations.weight.original,
            layer.parametrizations.weight[0].log_scale,
        ]
    for parameter in trained:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, lr=args.lr)
    print(f"step 0 (GPTQ start = PTQ): {score(student)}", flush=True)
    started = time.perf_counter()
    for step in range(args.steps):
        inputs = contract_tensor(
            batch_for_step(train, step, args.batch_size, 0), contract, loaded.preprocessing
        )
        with torch.no_grad():
            target = teacher(inputs)
        student.train()
        loss = distillation_loss(student(inputs), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            seconds = time.perf_counter() - started
            print(
                f"step {step + 1} ({seconds:.0f} s, KL {loss.item():.3e}): {score(student)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
