"""Write a seed model with seeded, non-trivial weights as a save_pretrained checkpoint directory.

There is no model hub here: this stands in for a downloaded checkpoint so every command that
takes MODEL can be measured on weights whose blocks matter (V1 layer scales 0.5, V2 GRN gamma/beta
~ N(0, 0.5)). ImageNet top-1 of such weights is meaningless; fidelity against fp32 is not.

    python bench/make_checkpoint.py convnext-tiny-224 --out runs/ckpt/convnext-tiny-224
"""

from __future__ import annotations

import argparse

from edge_convnext.testing import nontrivial_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seed_model", choices=["convnext-tiny-224", "convnextv2-tiny-1k-224"])
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    nontrivial_model(args.seed_model, args.seed).hf_model.save_pretrained(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
