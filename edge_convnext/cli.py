"""``edge-convnext``: the command line. A thin layer: parse, call the library, print.

Exit status: 0 success; 1 some inputs failed (each reported); 2 usage errors (bad option,
missing checkpoint, unsupported target x recipe).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap

from .errors import EdgeConvnextError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32, width=100)


def _section(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


MAIN_DESCRIPTION = _section(
    """
    Quantize ConvNeXt-tiny (V1 facebook/convnext-tiny-224, V2 facebook/convnextv2-tiny-1k-224),
    lower it to Core ML (.mlpackage), TFLite/LiteRT (.tflite) and ExecuTorch (.pte), audit every
    artifact in its own runtime, and classify photos on a Raspberry Pi.

    MODEL arguments accept a Hugging Face Hub id (cached; HF_HUB_OFFLINE=1 is respected), a local
    checkpoint directory written by save_pretrained (config.json + model.safetensors), or, with
    --random-init, a seed name built with seeded random weights (no network).
    """
)
MAIN_EPILOG = _section(
    """
    examples:
      edge-convnext predict --random-init convnext-tiny-224 photo.jpg
      edge-convnext export facebook/convnext-tiny-224 --target tflite --recipe fp32 -o out/
      edge-convnext predict out/convnext-tiny-224.fp32.app.tflite photos/ --json

    Run `edge-convnext COMMAND --help` for each command's manual.
    exit status: 0 ok, 1 some inputs failed (each reported), 2 usage error.
    """
)


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model source")
    group.add_argument(
        "--random-init",
        action="store_true",
        help="build MODEL (a seed name or Hub id) with seeded random weights, no network",
    )
    group.add_argument("--seed", type=int, default=0, help="seed for --random-init (default 0)")


def _add_predict(commands) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify images with a checkpoint or an artifact",
        formatter_class=_formatter,
        description=_section(
            """
            Classify image files (or every image under a directory, recursively) and print the
            top-k classes with softmax probabilities.

            MODEL is a Hub id, a checkpoint directory, a seed name with --random-init, or an
            artifact file (.pte, .tflite, .mlpackage) made by `edge-convnext export`. Artifacts
            run in their own runtime without torch. Images are decoded with Pillow (any mode:
            grayscale, CMYK, palette, 16-bit, alpha composited on white) and preprocessed exactly
            as transformers' ConvNextImageProcessor does.
            """
        ),
        epilog=_section(
            """
            output:
              --json prints one object per image and line:
                {"image": PATH, "top_k": [{"index": I, "label": L, "score": P}, ...]}
              or, for an image that cannot be read, {"image": PATH, "error": REASON}.
              PATH is as given on the command line, or as found under a given directory.

            exit status: 0 all images classified, 1 some failed, 2 usage error.

            examples:
              edge-convnext predict --random-init convnext-tiny-224 cat.jpg
              edge-convnext predict ./my-checkpoint photos/ --top-k 3 --json
              edge-convnext predict convnext-tiny-224.fp32.app.tflite cat.jpg --threads 4
            """
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="Hub id, checkpoint dir, seed, or artifact")
    parser.add_argument("images", metavar="IMAGE_OR_DIR", nargs="+", help="image files or dirs")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per image (5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: all)")
    _add_model_source(parser)
    parser.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    from .predict import classify
    from .runners import open_runner

    runner = open_runner(args.model, random=args.random_init, seed=args.seed, threads=args.threads)
    if runner.note:
        print(f"note: {runner.note}", file=sys.stderr)
    failed = False
    for prediction in classify(runner, args.images, top_k=args.top_k):
        failed |= prediction.error is not None
        if args.json:
            print(json.dumps(prediction.to_json()), flush=True)
        elif prediction.error is not None:
            print(f"{prediction.image}: error: {prediction.error}", flush=True)
        else:
            print(prediction.image)
            for index, label, score in prediction.top_k:
                print(f"  {score:7.4f}  {label} ({index})")
            sys.stdout.flush()
    return EXIT_FAILED if failed else EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-convnext",
        formatter_class=_formatter,
        description=MAIN_DESCRIPTION,
        epilog=MAIN_EPILOG,
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_predict(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except EdgeConvnextError as error:
        print(f"edge-convnext: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("edge-convnext: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
