"""``edge-convnext``: the command line. A thin layer: parse, call the library, print.

Exit status (the rule lives in ``errors``: a ``UsageError`` is 2, any other error 1): 0 success;
1 some inputs or artifacts failed (unreadable image, corrupt checkpoint or artifact, a runtime
error, a dataset with no usable images; each reported); 2 usage errors (a bad or out-of-range
option, unknown target or recipe, unsupported target x recipe, a missing required input: a path
that does not exist, a Hub id that cannot be resolved, no --calib for a calibrated recipe);
130 interrupted. User errors never print a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import textwrap

from .errors import EXIT_FAILED, EXIT_OK, EdgeConvnextError, NotFoundError, UsageError

EXIT_INTERRUPTED = 130


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32, width=100)


def _section(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def _number(kind: type = int, low: float = 1, *, strict: bool = False, high: float | None = None):
    """An argparse ``type=``: a finite ``kind`` (int or float) ``>= low`` (``> low`` if ``strict``)
    and, given ``high``, ``<= high``.

    Anything else is argparse's usage error (exit 2) naming the valid range, e.g.
    ``argument --steps: invalid value '0': expected an integer >= 1``.
    """
    what = "an integer" if kind is int else "a finite number"
    expected = f"{what} {'>' if strict else '>='} {low}"
    if high is not None:
        expected += f" and <= {high}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {expected}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {expected}")
        return value

    return parse


# Runtime threads: more than this is a typo (LiteRT segfaults creating 100000 threads).
MAX_THREADS = min(256, max(8, 4 * (os.cpu_count() or 1)))


def _threads():
    """``--threads``: an integer in 1..:data:`MAX_THREADS` (4 per core, at least 8, at most 256)."""
    return _number(int, 1, high=MAX_THREADS)


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

    exit status:
      0    ok
      1    some inputs or artifacts failed, each reported: an unreadable image, a corrupt
           checkpoint or artifact (or its sidecar), a dataset with no usable images, a
           converter or runtime error
      2    usage: a bad or out-of-range option, an unknown target, recipe or seed, an
           unsupported target x recipe, a missing required input (a path that does not
           exist, a Hub id that cannot be resolved, no --calib for a calibrated recipe)
      130  interrupted (Ctrl-C)
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


EXTERNAL_HELP = _section(
    """
    artifacts made elsewhere:
      A .tflite, .pte, .mlpackage or .onnx (needs onnxruntime) ImageNet-1k classifier with no
      sidecar <artifact>.json of ours runs when its preprocessing is given: --resize N (shortest
      edge; none: warp to the crop) --crop N --interpolation bilinear|bicubic|nearest --mean R,G,B
      --std R,G,B (in [0, 1] units, as a Hugging Face preprocessor config: (x - 127) / 128 on
      0..255 pixels is --mean 0.498,0.498,0.498 --std 0.502,0.502,0.502) and, if the input
      shape does not say it, --input-layout nhwc|nchw. The input dtype and the scale/zero
      point of a quantized input are read from the artifact: a float input gets the
      normalized values, a quantized one the same values quantized, a uint8 input without
      quantization raw 0..255 pixels. Output: 1000 logits, or 1001 with background class 0
      (dropped); labels are ImageNet-1k's in sorted-wnid order.
      --preprocess FILE gives the same facts as JSON, keys named like the flags:
        {"resize": 256, "crop": 224, "interpolation": "bilinear",
         "mean": [0.498, 0.498, 0.498], "std": [0.502, 0.502, 0.502], "input_layout": "nhwc"}
      flags given beside it override its keys. An artifact with its sidecar, and a checkpoint,
      always use their own preprocessing: the flags apply only to artifacts without one, and
      are refused (exit 2) when no model needs them. A quantized file made elsewhere does not
      say which images it was calibrated on: give those to audit's --exclude.
    """
)


def _add_external_input(parser: argparse.ArgumentParser) -> None:
    """The flags of an artifact made elsewhere (see :data:`EXTERNAL_HELP`)."""
    group = parser.add_argument_group("artifacts made elsewhere (no sidecar; see below)")
    group.add_argument("--resize", metavar="N", help="shortest edge before the crop (or none)")
    group.add_argument("--crop", metavar="N", help="centre crop side")
    group.add_argument("--interpolation", metavar="F", help="bilinear, bicubic or nearest")
    group.add_argument("--mean", metavar="R,G,B", help="per-channel mean, [0, 1] units")
    group.add_argument("--std", metavar="R,G,B", help="per-channel std, [0, 1] units")
    group.add_argument(
        "--input-layout", type=str.lower, choices=["nhwc", "nchw"], help="input tensor layout"
    )
    group.add_argument("--preprocess", metavar="FILE", help="the same facts as a JSON file")


def _external_input(args):
    """The ``ExternalInput`` the flags (over a ``--preprocess`` file) give, None if none."""
    from .preprocess import EXTERNAL_FIELDS, ExternalInput, read_external_file

    options = read_external_file(args.preprocess) if args.preprocess else {}
    options.update(
        {name: getattr(args, name) for name in EXTERNAL_FIELDS if getattr(args, name) is not None}
    )
    return ExternalInput.from_options(options) if options else None


def _check_external_used(external, runners) -> None:
    """Refuse preprocessing flags that no model takes (each has a sidecar or is a checkpoint)."""
    if external is not None and not any(getattr(r, "external", None) for r in runners):
        raise UsageError(
            "--resize/--crop/--interpolation/--mean/--std/--input-layout/--preprocess are for "
            "artifacts made elsewhere (no sidecar manifest); every model given carries its own "
            "preprocessing (sidecar or checkpoint config): drop them"
        )


def _add_predict(commands) -> None:
    parser = commands.add_parser(
        "predict",
        help="classify images with a checkpoint or an artifact",
        formatter_class=_formatter,
        description=_section(
            """
            Classify image files and print the top-k classes with softmax probabilities.
            IMAGE is a file, a directory (every image under it, recursively), a glob pattern
            ('photos/*.jpg', '**' recursive; quote it), or - to read paths from standard input,
            one per line (find photos -name '*.jpg' | edge-convnext predict MODEL -).

            MODEL is a Hub id, a checkpoint directory, a seed name with --random-init, or an
            artifact file (.pte, .tflite, .mlpackage) made by `edge-convnext export`, with its
            sidecar <artifact>.json beside it (copy both). Artifacts run in their own runtime
            without torch (on a Raspberry Pi: pip install 'edge-convnext[pi]'). Images are decoded
            with Pillow (any mode: grayscale, CMYK, palette, 16-bit, alpha composited on white)
            and preprocessed exactly as transformers' ConvNextImageProcessor does.

            --watch DIR classifies each image that appears in DIR from then on, once it is
            complete: a file is read only after its size and mtime have stayed put for --settle
            seconds, and hidden or temporary names (.x, *.tmp, *.part) are skipped, so writers
            that write a temporary name and rename it into place are always safe.

            --bench N times N runs on the first image (or seeded noise if none is given) after
            --warmup runs, and prints p50/p90 latency, load and first-call time, peak RSS and
            the runtime and thread count used.
            """
        ),
        epilog=_section(
            """
            output:
              --json prints one object per image and line (JSON lines):
                {"image": PATH, "top_k": [{"index": I, "label": L, "score": P}, ...]}
              or, for an image that cannot be read, {"image": PATH, "error": REASON};
              --bench --json prints {"bench": {...}}.
              PATH is as given, as read from standard input, or as found under a directory.
              stderr says which runtime and how many threads run an artifact.

            exit status: 0 all images classified, 1 some failed (each on its line, or the
            model or artifact failed to load or run), 2 usage error (see edge-convnext --help;
            a MODEL that is not an artifact when torch is not installed is one).

            examples:
              edge-convnext predict --random-init convnext-tiny-224 cat.jpg
              edge-convnext predict ./my-checkpoint photos/ --top-k 3 --json
              edge-convnext predict convnext-tiny-224.fp32.app.tflite 'photos/*.jpg' --threads 4
              ls shots/*.png | edge-convnext predict model.tflite - --json
              edge-convnext predict model.tflite --watch incoming/ --json
              edge-convnext predict model.tflite cat.jpg --bench 50
              edge-convnext predict efficientnet_lite0.tflite cat.jpg --resize 256 --crop 224 \\
                  --interpolation bilinear --mean 0.498,0.498,0.498 --std 0.502,0.502,0.502
            """
        )
        + "\n\n"
        + EXTERNAL_HELP,
    )
    parser.add_argument("model", metavar="MODEL", help="Hub id, checkpoint dir, seed, or artifact")
    parser.add_argument(
        "images",
        metavar="IMAGE_OR_DIR",
        nargs="*",
        help="image files, dirs, globs, or - (paths on stdin)",
    )
    parser.add_argument(
        "--top-k", type=_number(int, 1), default=5, metavar="K", help="classes per image (5)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--threads",
        type=_threads(),
        default=None,
        help="runtime threads (default: all cores this process may use)",
    )
    watching = parser.add_argument_group("watching a folder")
    watching.add_argument("--watch", metavar="DIR", help="classify images as they appear in DIR")
    watching.add_argument(
        "--settle",
        type=_number(float, 0),
        default=0.5,
        metavar="S",
        help="seconds a new file must stay unchanged before it is read (0.5)",
    )
    watching.add_argument(
        "--watch-timeout",
        type=_number(float, 0, strict=True),
        metavar="S",
        help="stop watching after S seconds (default: until Ctrl-C)",
    )
    watching.add_argument(
        "--max-files", type=_number(int, 1), metavar="N", help="stop after N new files"
    )
    timing = parser.add_argument_group("benchmark")
    timing.add_argument("--bench", type=_number(int, 1), metavar="N", help="time N runs")
    timing.add_argument(
        "--warmup", type=_number(int, 1), default=3, metavar="W", help="untimed runs first (3)"
    )
    _add_external_input(parser)
    _add_model_source(parser)
    parser.set_defaults(run=_run_predict)


def _check_predict_args(args) -> None:
    if args.watch is None and args.bench is None and not args.images:
        raise UsageError("predict: give at least one IMAGE_OR_DIR (file, dir, glob, -) or --watch")
    if args.watch is not None and args.bench is not None:
        raise UsageError("predict: --watch and --bench do not go together")
    if args.watch is None and (args.watch_timeout is not None or args.max_files is not None):
        raise UsageError("predict: --watch-timeout and --max-files go with --watch DIR")
    if args.watch is not None and not os.path.isdir(args.watch):
        raise NotFoundError(f"--watch {args.watch}: no such directory")
    if args.bench is not None and len(args.images) > 1:
        raise UsageError("predict --bench times one image; give one IMAGE (or none: noise)")
    if args.bench is not None and args.images and not os.path.isfile(args.images[0]):
        raise NotFoundError(f"--bench {args.images[0]}: no such image file")


def _print_prediction(prediction, as_json: bool) -> None:
    if as_json:
        print(json.dumps(prediction.to_json()), flush=True)
    elif prediction.error is not None:
        print(f"{prediction.image}: error: {prediction.error}", flush=True)
    else:
        print(prediction.image)
        for index, label, score in prediction.top_k:
            print(f"  {score:7.4f}  {label} ({index})")
        sys.stdout.flush()


def _run_predict(args) -> int:
    import time

    from . import predict
    from .runners import open_runner

    _check_predict_args(args)
    external = _external_input(args)
    start = time.perf_counter()
    runner = open_runner(
        args.model,
        random=args.random_init,
        seed=args.seed,
        threads=args.threads,
        external=external,
    )
    load_ms = (time.perf_counter() - start) * 1e3
    _check_external_used(external, [runner])
    if runner.note:
        print(f"note: {runner.note}", file=sys.stderr)
    if args.top_k > len(runner.labels):
        print(
            f"note: --top-k {args.top_k}: the model has {len(runner.labels)} classes; "
            f"showing {len(runner.labels)}",
            file=sys.stderr,
        )
    if getattr(runner, "runtime", None):
        print(f"note: runtime {runner.runtime}, {runner.threads} threads", file=sys.stderr)
    if args.bench is not None:
        image = args.images[0] if args.images else None
        result = predict.bench(runner, image, args.bench, args.warmup, load_ms=load_ms)
        print(json.dumps(result.to_json()) if args.json else result, flush=True)
        return EXIT_OK
    if args.watch is not None:
        print(f"watching {args.watch} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        found = predict.watch(
            args.watch,
            settle=args.settle,
            timeout=args.watch_timeout,
            max_files=args.max_files,
        )
        images = (predict.classify_one(runner, image, args.top_k) for image in found)
    else:
        images = predict.classify(runner, args.images, top_k=args.top_k)
    failed = False
    for prediction in images:
        failed |= prediction.error is not None
        _print_prediction(prediction, args.json)
    return EXIT_FAILED if failed else EXIT_OK


def _parse_predict(argv: list[str]) -> argparse.Namespace:
    """``edge-convnext predict ...`` parsed by a parser with only ``predict``, so that it does not
    import what the other commands' parsers do (numpy, Pillow, the registry) before it must.

    IMAGEs may follow options (``predict M --bench 5 cat.jpg``): argparse leaves an optional
    positional that comes after an option unparsed, so those are picked up here.
    """
    parser = argparse.ArgumentParser(prog="edge-convnext", formatter_class=_formatter)
    _add_predict(parser.add_subparsers(metavar="COMMAND", required=True))
    args, extra = parser.parse_known_args(argv)
    options = [word for word in extra if word.startswith("-") and word != "-"]
    if options:
        parser.error(f"unrecognized arguments: {' '.join(options)}")
    args.images = [*args.images, *extra]
    return args


def _add_export(commands) -> None:
    from . import contracts, targets
    from .quantize.recipes import RECIPES

    support = "\n".join(
        f"  {target:<11} {', '.join(recipes)}" for target, recipes in targets.support().items()
    )
    recipe_lines = "\n".join(f"  {r.name:<11} {r.description}" for r in RECIPES.values())
    contract_lines = "\n".join(
        f"  {c.name:<11} {c.description}" for c in contracts.CONTRACTS.values()
    )
    per_target = "\n".join(
        f"  {t:<11} {', '.join(targets.get(t).rewrites)}" for t in targets.names()
    )
    suffixes = ", ".join(targets.suffixes())
    parser = commands.add_parser(
        "export",
        help=f"lower a checkpoint to an artifact ({suffixes})",
        formatter_class=_formatter,
        description=_section(
            """
            Load MODEL, apply the graph rewrites that lower well, and write an artifact for
            --target with --recipe, plus a sidecar manifest <artifact>.json (input contract,
            labels, sha256, tool versions, weights licence). Files are written to a temporary
            name and renamed, so an interrupted export never leaves a half-written artifact.
            Prints the artifact path. Artifacts are named <model>.<recipe>.<contract><suffix>,
            """
        )
        + f"\nwith suffix {suffixes}.",
        epilog=f"supported target x recipe:\n{support}\n\nrecipes:\n{recipe_lines}\n\n"
        f"input contracts (--contract, default {contracts.DEFAULT.name}):\n{contract_lines}\n\n"
        "graph rewrites applied before lowering (logits unchanged; described in\n"
        f"edge_convnext/rewrites.py; int8-full keeps the portable first two):\n{per_target}\n\n"
        "examples:\n"
        "  edge-convnext export facebook/convnext-tiny-224 --target coreml --recipe fp16 -o out/\n"
        "  edge-convnext export --random-init convnextv2-tiny-1k-224 --target executorch -o out/",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        nargs="?",
        help="Hub id, checkpoint dir, or seed (default with --from-qat: the "
        "model the checkpoint was trained from)",
    )
    parser.add_argument("--target", required=True, choices=targets.names(), help="runtime")
    parser.add_argument("--recipe", default="fp32", help="numerics recipe (default fp32)")
    parser.add_argument(
        "--contract",
        default=contracts.DEFAULT.name,
        choices=sorted(contracts.CONTRACTS),
        help="input contract",
    )
    parser.add_argument("-o", "--out", default=".", metavar="DIR", help="output dir (default .)")
    parser.add_argument(
        "--rewrites",
        metavar="LIST",
        help="comma-separated rewrites to apply instead of the target's (listed below); e.g. "
        "head-layernorm-eps,grn-sum-squares to see the delegation without the XNNPACK ones",
    )
    quant = parser.add_argument_group("quantization")
    quant.add_argument("--calib", metavar="DIR", help="calibration images (static int8 recipes)")
    quant.add_argument(
        "--calib-size",
        type=_number(int, 1),
        metavar="N",
        help="calibration images to use, stratified by class when labelled (default: the recipe's)",
    )
    quant.add_argument(
        "--calib-seed", type=_number(int, 0), default=0, help="calibration pick seed (0)"
    )
    quant.add_argument(
        "--keep-float",
        type=_number(int, 0),
        default=0,
        metavar="N",
        help="keep the N layers most sensitive to quantization in higher precision: float "
        "(int8 in 4-bit recipes; ranked by per-layer SQNR on calibration images; shown by inspect)",
    )
    quant.add_argument(
        "--target-snr",
        type=_number(float, 0, strict=True, high=200),
        metavar="DB",
        help="instead of --keep-float N: keep the fewest layers that give this logits SNR "
        "against float on the calibration images held back from the quantizer (one in 4; the "
        "choice and the search: inspect)",
    )
    quant.add_argument("--from-qat", metavar="CKPT", help="QAT checkpoint for a *-qat recipe")
    quant.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_source(parser)
    parser.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from pathlib import Path

    from .pipeline import Calibration, build

    model, random, seed = args.model, args.random_init, args.seed
    if args.from_qat and model is None:
        from .quantize.qat import load_checkpoint

        meta = load_checkpoint(Path(args.from_qat))["meta"]
        model, random, seed = meta["model"], meta["random_init"], meta["model_seed"]
    if model is None:
        raise UsageError("export needs MODEL (or --from-qat CKPT)")
    calibration = Calibration(
        Path(args.calib) if args.calib else None,
        args.calib_size,
        args.calib_seed,
        args.keep_float,
        args.target_snr,
    )
    artifact = build(
        model,
        args.target,
        args.recipe,
        args.out,
        contract=args.contract,
        random=random,
        seed=seed,
        calibration=calibration,
        from_qat=Path(args.from_qat) if args.from_qat else None,
        rewrite_names=_rewrite_names(args.rewrites),
        progress=not args.no_progress,
    )
    print(artifact)
    return EXIT_OK


def _rewrite_names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _add_qat(commands) -> None:
    from . import contracts, targets
    from .quantize.recipes import QATConfig

    defaults = QATConfig()
    qat_targets = [t for t, recipes in targets.support().items() if "w8a8-qat" in recipes]
    parser = commands.add_parser(
        "qat",
        help="quantization-aware training by distillation (resumable)",
        formatter_class=_formatter,
        description=_section(
            """
            Fine-tune MODEL with fake quantization from --target's int8 quantizer, by
            distillation from the float model on unlabeled images (KL divergence of logits), so
            no labelled training set is needed. Training starts at the model PTQ would ship
            (SmoothQuant-balanced, GPTQ-rounded weights, PTQ's calibrated activation ranges,
            all from the first 64 images); the ranges stay fixed while the weights train.
            Checkpoints are written atomically every --checkpoint-every steps; if the run is
            killed, the same command with --resume continues from the last checkpoint and ends
            at the same weights. Then export it with
            `edge-convnext export --target T --recipe w8a8-qat --from-qat CKPT`.
            """
        ),
        epilog=_section(
            """
            examples:
              edge-convnext qat facebook/convnext-tiny-224 --target executorch --data train/ \\
                  --steps 300 --out convnext.qat.pt
              edge-convnext qat facebook/convnext-tiny-224 --target executorch --data train/ \\
                  --steps 300 --out convnext.qat.pt --resume      # after an interruption
              edge-convnext export --target executorch --recipe w8a8-qat --from-qat convnext.qat.pt
              torchrun --nproc-per-node 2 -m edge_convnext qat facebook/convnext-tiny-224 \\
                  --target executorch --data train/ --steps 300 --out convnext.qat.pt

            Under torchrun, QAT is data-parallel: each process trains on its slice of the same
            global batch (--batch-size, a multiple of the process count); rank 0 calibrates,
            checkpoints and prints. With --device cuda each process takes cuda:LOCAL_RANK.
            Keep the images you audit on out of --data.
            """
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="Hub id, checkpoint dir, or seed")
    parser.add_argument("--target", required=True, choices=qat_targets, help="runtime")
    parser.add_argument("--data", required=True, metavar="DIR", help="training images (unlabeled)")
    parser.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument(
        "--steps", type=_number(int, 1), default=defaults.steps, help="optimiser steps"
    )
    parser.add_argument(
        "--batch-size", type=_number(int, 1), default=defaults.batch_size, metavar="B"
    )
    parser.add_argument(
        "--lr",
        type=_number(float, 0, strict=True),
        default=defaults.learning_rate,
        help="AdamW learning rate (default %(default)s)",
    )
    parser.add_argument(
        "--images",
        type=_number(int, 1),
        default=512,
        metavar="N",
        help="images drawn from --data (decoded once; default 512)",
    )
    parser.add_argument(
        "--checkpoint-every", type=_number(int, 1), default=defaults.checkpoint_every
    )
    parser.add_argument("--train-seed", type=_number(int, 0), default=0, help="data order seed (0)")
    parser.add_argument(
        "--contract", default=contracts.DEFAULT.name, choices=sorted(contracts.CONTRACTS)
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--backend",
        choices=["gloo", "nccl"],
        help="torch.distributed backend under torchrun (default: nccl on cuda, gloo on cpu)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_source(parser)
    parser.set_defaults(run=_run_qat)


def _run_qat(args) -> int:
    from pathlib import Path

    from .pipeline import prepare_model
    from .quantize.data_parallel import session
    from .quantize.qat import train
    from .quantize.recipes import QATConfig

    _check_qat_args(args)
    config = QATConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        checkpoint_every=args.checkpoint_every,
        seed=args.train_seed,
    )
    with session(args.device, args.backend) as group:  # data-parallel under torchrun
        run = train(
            args.model,
            args.target,
            Path(args.data),
            Path(args.out),
            config,
            load_model=prepare_model,
            contract=args.contract,
            images=args.images,
            random_init=args.random_init,
            model_seed=args.seed,
            resume=args.resume,
            device=group.device,
            progress=not args.no_progress,
            group=group,
        )
    if group.is_main:
        print(f"{args.out}  (step {run.step_index}, last KL {run.losses[-1]:.4g})")
    return EXIT_OK


def _check_qat_args(args) -> None:
    """Refuse, before any work, a device torch does not have and an --out that is not ours."""
    from pathlib import Path

    import torch

    try:
        device = torch.device(args.device)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {args.device!r}: not a torch device; expected cpu, cuda, cuda:N or mps"
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(device.type, False):
        raise UsageError(f"--device {args.device!r}: not available on this machine; use cpu")
    if (
        device.type == "cuda"
        and device.index is not None
        and (device.index >= torch.cuda.device_count())
    ):
        raise UsageError(
            f"--device {args.device!r}: this machine has {torch.cuda.device_count()} CUDA devices"
        )
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out}: is a directory; expected a checkpoint file name")
    if out.exists() and not args.resume:
        raise UsageError(
            f"--out {out} exists: pass --resume to continue that run, or choose another --out"
        )
    if out.exists():
        from .quantize.qat import load_checkpoint

        load_checkpoint(out)  # a file that is not a QAT checkpoint: CheckpointError, now


def _add_inspect(commands) -> None:
    parser = commands.add_parser(
        "inspect",
        help="show an artifact's manifest and op/delegation summary",
        formatter_class=_formatter,
        description=_section(
            """
            Print what an artifact is (its sidecar manifest: model, recipe, input contract,
            sha256, tools, licence) and how it runs: op counts, which ops a delegate (XNNPACK)
            takes and which fall back to reference kernels, embedded metadata.
            """
        ),
        epilog="example:\n  edge-convnext inspect out/convnext-tiny-224.fp32.app.pte --json",
    )
    parser.add_argument("artifact", metavar="ARTIFACT", help=".pte, .tflite or .mlpackage")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=_run_inspect)


def _run_inspect(args) -> int:
    from dataclasses import asdict
    from pathlib import Path

    from . import manifest, targets
    from .errors import UnsupportedError

    path = Path(args.artifact)
    target = targets.for_artifact(path)
    if target is None:
        raise UnsupportedError(f"{path}: not an artifact; expected {', '.join(targets.suffixes())}")
    if not path.exists():
        raise NotFoundError(f"{path}: no such artifact")
    recorded = manifest.read(path)
    manifest.verify(path, recorded, sha256=True)
    info = {"manifest": asdict(recorded), "runtime": target.describe(path)}
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    shown = {k: v for k, v in info["manifest"].items() if k != "labels"}
    shown["labels"] = f"{len(info['manifest']['labels'])} labels"
    for section, data in (("manifest", shown), ("runtime", info["runtime"])):
        print(f"{section}:")
        for key, value in data.items():
            text = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
            print(f"  {key}: {text}")
    return EXIT_OK


def _add_audit(commands) -> None:
    from .data import LAYOUTS

    parser = commands.add_parser(
        "audit",
        help="score artifacts and checkpoints on ImageNet validation images",
        formatter_class=_formatter,
        description=_section(
            """
            Run each ARTIFACT_OR_MODEL in its own runtime over an ImageNet validation subset and
            report what it really scores: top-1/top-5 with Wilson 95% intervals and, against a
            reference (default: the first one given), top-1 agreement, McNemar's paired test,
            logit cosine, SNR (dB) and KL, latency p50/p90 and file size.

            --data may be an ImageFolder (val/<wnid>/*.JPEG), flat ILSVRC2012_val_*.JPEG files with
            the devkit ground truth (ILSVRC2012_validation_ground_truth.txt + meta.mat) or Kaggle's
            LOC_val_solution.csv, a path,label CSV, or Hugging Face imagenet-1k parquet shards. The
            layout is detected (ground-truth files are found by name) unless --layout is given.

            Unreadable images are listed with their reason and left out of every denominator.
            Images an artifact was calibrated on (listed in its manifest) are never scored unless
            --include-calibration is given. Core ML artifacts on Linux are scored through the
            numpy MIL evaluator and marked so.

            Large audits: --resume continues a killed one, --shard K/N scores one slice (then
            `edge-convnext audit merge PARTS... --out DIR`), --ray runs the slices on a Ray
            cluster (see "at scale" below).
            """
        ),
        epilog=_section(
            """
            output (in --out):
              report.json      one row per artifact; fractions in [0, 1]
              report.md        the same as a table
              accuracy.png     top-1/top-5 with 95% intervals per artifact
              tradeoff.png     accuracy vs size vs latency
              predictions.npz  logits per image: a --reference for audits on other machines
              manifest.json    the exact image list with sha256: re-run it with --manifest
              report.json is written last and carries a run id that predictions.npz shares:
              an interrupted audit leaves no report beside another run's files.

            exit status: 0 every image scored by every model; 1 an image was unreadable (FIFOs,
            files over 256 MB and rows of a labels CSV that do not exist included), a model
            failed to load or failed on an image, or a model scored nothing (each said on
            stderr, listed in report.md); 2 usage. A labels CSV listing files outside --data
            is refused unless --allow-outside-data.

            examples:
              edge-convnext audit facebook/convnext-tiny-224 out/*.tflite --data val/ --per-class 5
              # on a Raspberry Pi, against predictions made on the host (no torch needed):
              edge-convnext audit model.tflite --data val/ --manifest host/manifest.json \\
                  --reference host/predictions.npz
              # a classifier made elsewhere (no sidecar): its preprocessing on the command line
              edge-convnext audit efficientnet_lite0.tflite --data val/ --resize 256 --crop 224 \\
                  --interpolation bilinear --mean 0.498,0.498,0.498 --std 0.502,0.502,0.502

            at scale:
              Per-image results go to disk chunk by chunk (OUT/part/ while it runs), so memory
              does not grow with the data set. A killed audit continues with the same command
              plus --resume, scoring only the chunks not yet on disk.
              # 4 machines (or 4 runs), one slice each, then one report:
              edge-convnext audit ckpt/ out/*.tflite --data val/ --shard 1/4 --out parts/1
              ...
              edge-convnext audit ckpt/ out/*.tflite --data val/ --shard 4/4 --out parts/4
              edge-convnext audit merge parts/1 parts/2 parts/3 parts/4 --out report/
              # the same on a Ray cluster (pip install 'edge-convnext[ray]'), or a local Ray:
              edge-convnext audit ckpt/ out/*.tflite --data val/ --ray 10.0.0.5:6379
              edge-convnext audit ckpt/ out/*.tflite --data val/ --ray --shards 8
              Every shard must run the same models on the same --data selection (and --seed);
              merge checks that and that no shard is missing or repeated. On Ray, one actor per
              runtime per node opens the models once; a node scores the runtimes it can import
              or advertises (ray start --resources '{"edge_convnext_coreml": 1}' on a Mac);
              artifacts and images go to other nodes as bytes. `edge-convnext audit merge
              --help` has the merge manual.
            """
        )
        + "\n\n"
        + EXTERNAL_HELP,
    )
    parser.add_argument(
        "models",
        metavar="ARTIFACT_OR_MODEL",
        nargs="+",
        help="artifact files, checkpoint dirs, Hub ids (or seeds with --random-init)",
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="ImageNet validation images")
    subset = parser.add_argument_group("subset")
    choice = subset.add_mutually_exclusive_group()
    choice.add_argument(
        "--per-class", type=_number(int, 1), metavar="K", help="K images per class, stratified"
    )
    choice.add_argument("--limit", type=_number(int, 1), metavar="N", help="N images in all")
    choice.add_argument("--manifest", metavar="FILE", help="re-run the images of an earlier audit")
    subset.add_argument(
        "--seed", type=_number(int, 0), default=0, help="subset (and --random-init) seed (0)"
    )
    subset.add_argument("--layout", choices=LAYOUTS, help="dataset layout (default: detect)")
    subset.add_argument(
        "--labels", metavar="FILE", help="ground-truth file, if not found in --data"
    )
    subset.add_argument(
        "--allow-outside-data",
        action="store_true",
        help="let a labels CSV list images outside --data (refused by default)",
    )
    subset.add_argument(
        "--exclude", nargs="*", default=[], metavar="KEY", help="image keys or paths never to score"
    )
    subset.add_argument(
        "--include-calibration",
        action="store_true",
        help="also score images the artifacts were calibrated on",
    )
    parser.add_argument(
        "--reference",
        metavar="R",
        help="one of the audited names, another model/artifact, or a "
        "predictions.npz[#NAME] from an earlier audit (default: the first)",
    )
    parser.add_argument("--out", default="audit", metavar="DIR", help="output dir (./audit)")
    parser.add_argument(
        "--threads", type=_threads(), default=None, help="runtime threads (default: all)"
    )
    parser.add_argument(
        "--workers",
        type=_number(int, 1, high=64),
        default=None,
        metavar="N",
        help="image decode threads (default: one per core, at most 4)",
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="build model arguments that name a seed with seeded random weights",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    scale = parser.add_argument_group("at scale (see below)")
    scale.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed audit of the same models and images in --out",
    )
    where = scale.add_mutually_exclusive_group()
    where.add_argument(
        "--shard",
        metavar="K/N",
        help="score only slice K of N and write a part to --out (combine: audit merge)",
    )
    where.add_argument(
        "--ray",
        nargs="?",
        const=RAY_LOCAL,
        metavar="ADDRESS",
        help="score the shards on a Ray cluster: HOST:PORT, ray://HOST:PORT or auto; "
        "no ADDRESS starts a local Ray",
    )
    scale.add_argument(
        "--shards",
        type=_number(int, 1),
        metavar="N",
        help="with --ray: how many shards (default: one per 2048 images, at least 2 per actor)",
    )
    _add_external_input(parser)
    parser.set_defaults(run=_run_audit)


RAY_LOCAL = "local"  # --ray with no ADDRESS


def _ray_address(args) -> str | None:
    """``--ray``'s ADDRESS (``None``: start a local Ray). argparse gives ``--ray`` the word after
    it, which may be the first model (``--ray model.tflite ...``): an address is ``auto``,
    ``local`` or has a ``:`` (``HOST:PORT``, ``ray://HOST:PORT``), so anything else goes back to
    the models."""
    value = args.ray
    if value == RAY_LOCAL:
        return None
    if value == "auto" or (":" in value and not os.path.exists(value)):
        return value
    args.models.insert(0, value)
    return None


def _check_scale_args(args) -> None:
    """Usage errors of --shard/--shards/--ray, before any model is opened."""
    from .audit import parse_shard

    if args.shards is not None and args.ray is None:
        raise UsageError("--shards goes with --ray; for one slice on this machine use --shard K/N")
    if args.shard is not None:
        args.shard = parse_shard(args.shard)
    if args.ray is not None:
        from .distributed import import_ray

        import_ray()  # a usage error naming the extra, before anything is loaded


def _run_audit(args) -> int:
    _check_scale_args(args)
    if args.ray is not None:
        return _run_audit_ray(args)
    from pathlib import Path

    from . import audit
    from .runners import calibration_keys, open_runner

    external = _external_input(args)
    runners, unloadable = [], []
    for ref in args.models:
        try:
            runners.append(
                open_runner(
                    ref,
                    random=args.random_init,
                    seed=args.seed,
                    threads=args.threads,
                    external=external,
                )
            )
        except UsageError:
            raise
        except EdgeConvnextError as error:  # a broken artifact: the others are still audited
            unloadable.append(error)
            print(f"edge-convnext: audit: not audited: {error}", file=sys.stderr)
    if not runners:
        raise unloadable[0]
    for runner in runners:
        if runner.note:
            print(f"note: {runner.name}: {runner.note}", file=sys.stderr)
    exclude = list(args.exclude)
    if not args.include_calibration:
        exclude += [key for runner in runners for key in calibration_keys(runner)]
    reference = args.reference
    names = {runner.name for runner in runners}
    if reference and reference not in names and ".npz" not in reference:
        reference = open_runner(
            reference,
            random=args.random_init,
            seed=args.seed,
            threads=args.threads,
            external=external,
        )
    _check_external_used(external, [*runners, reference])
    try:
        outcome = audit.audit(
            runners,
            args.data,
            layout=args.layout,
            labels_file=args.labels,
            per_class=args.per_class,
            limit=args.limit,
            seed=args.seed,
            reference=reference or runners[0].name,
            out=Path(args.out),
            manifest=args.manifest,
            exclude=exclude,
            progress=not args.no_progress,
            allow_outside=args.allow_outside_data,
            shard=args.shard,
            resume=args.resume,
            workers=args.workers,
        )
    except KeyboardInterrupt:
        print(
            "edge-convnext: audit: the chunks scored so far are kept in "
            f"{audit.part_folder(Path(args.out), args.shard)}; the same command with --resume "
            "continues from there",
            file=sys.stderr,
        )
        raise
    if args.resume:
        part = outcome.part
        print(
            f"edge-convnext: audit: resumed: {part.resumed} of {part.chunks} chunks were on disk",
            file=sys.stderr,
        )
    return _audit_exit(outcome, bool(unloadable))


def _audit_exit(outcome, unloadable: bool = False) -> int:
    """Print the report path and each problem; exit 1 if anything failed."""
    print(outcome.report)
    for problem in outcome.problems:
        print(
            f"edge-convnext: audit: {problem} (listed in {outcome.report.parent / 'report.md'})",
            file=sys.stderr,
        )
    return EXIT_FAILED if outcome.failed or unloadable else EXIT_OK


def _run_audit_ray(args) -> int:
    """``audit --ray``: the shards on a Ray cluster, then the merged report."""
    from pathlib import Path

    from . import distributed

    address = _ray_address(args)
    external = _external_input(args)
    if external is not None and not any(
        distributed.describe_model(ref, args.random_init, args.seed, external).external
        for ref in args.models
    ):
        _check_external_used(external, [])
    run = distributed.audit(
        args.models,
        args.data,
        address=address,
        shards=args.shards,
        resume=args.resume,
        threads=args.threads,
        workers=args.workers,
        random=args.random_init,
        external=external,
        layout=args.layout,
        labels_file=args.labels,
        per_class=args.per_class,
        limit=args.limit,
        seed=args.seed,
        reference=args.reference,
        out=Path(args.out),
        manifest=args.manifest,
        exclude=args.exclude,
        include_calibration=args.include_calibration,
        progress=not args.no_progress,
        allow_outside=args.allow_outside_data,
    )
    for line in run.actors:
        print(f"edge-convnext: audit: ray actor: {line}", file=sys.stderr)
    if run.resumed:
        print(
            f"edge-convnext: audit: resumed: {run.resumed} parts were on disk, {run.scored} scored",
            file=sys.stderr,
        )
    if run.outcome is None:
        for problem in run.failures:
            print(f"edge-convnext: audit: {problem}", file=sys.stderr)
        print(
            f"edge-convnext: audit: no report written; the finished parts are kept in "
            f"{run.parts}: the same command with --resume scores only the rest",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return _audit_exit(run.outcome)


def _add_audit_merge(commands) -> None:
    parser = commands.add_parser(
        "merge",
        help="combine the parts of a sharded audit into one report",
        formatter_class=_formatter,
        description=_section(
            """
            Combine the parts written by `edge-convnext audit ... --shard K/N --out PART` (one
            per K, on one machine or many) into the report set the unsharded audit writes:
            report.json, report.md, plots, predictions.npz and manifest.json in --out. The
            numbers are identical to the unsharded run's (counts, top-1/top-5 and their
            intervals, agreement, McNemar, cosine, SNR, KL); only the timing differs, summed
            over the parts.

            The parts must be of one audit (the same models, reference and image selection: the
            same --data subset and --seed) and complete, with every shard 1..N given once.
            Anything else is refused (exit 2) with what is wrong: parts of different audits,
            missing or repeated shards, an unfinished part (finish it with its --shard command
            plus --resume).
            """
        ),
        epilog=_section(
            """
            examples:
              edge-convnext audit merge parts/1 parts/2 parts/3 parts/4 --out report/
              edge-convnext audit merge parts/* --out report/

            exit status: 0 every image scored by every model; 1 some image was unreadable or a
            model failed on some (as in audit); 2 usage (the parts do not make one audit).
            """
        ),
    )
    parser.add_argument("parts", metavar="PART", nargs="+", help="part folders (audit --shard)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the report goes")
    parser.set_defaults(run=_run_audit_merge)


def _run_audit_merge(args) -> int:
    from . import audit

    return _audit_exit(audit.merge(args.parts, args.out))


def _parse_audit_merge(argv: list[str]) -> argparse.Namespace:
    """``edge-convnext audit merge ...``: its own parser, since ``audit`` takes positional
    models (``audit ./merge`` audits a file named merge)."""
    parser = argparse.ArgumentParser(prog="edge-convnext audit", formatter_class=_formatter)
    _add_audit_merge(parser.add_subparsers(metavar="COMMAND", required=True))
    return parser.parse_args(argv[1:])


def _add_build(commands) -> None:
    from . import contracts, targets
    from .build import DEFAULT_RECIPES, SAMPLE_AUDIT_IMAGES, SAMPLE_CALIB_IMAGES
    from .data import LAYOUTS

    parser = commands.add_parser(
        "build",
        help="the whole job: every target's float and int8 files, audited, in a dist/ folder",
        formatter_class=_formatter,
        description=_section(
            """
            Build every target x recipe asked for (default: fp32, fp16 and w8a8 wherever a
            target supports them), audit every artifact against the fp32 PyTorch reference on
            images none was calibrated on, and lay out --out for app bundling:

              OUT/ios/        .mlpackage + sidecar .json + labels.txt   (Xcode)
              OUT/android/    .tflite    + sidecar .json + labels.txt   (Android Studio)
              OUT/executorch/ .pte       + sidecar .json + labels.txt   (ExecuTorch app)
              OUT/report/     report.md (first table: which file to ship), report.json, plots
              OUT/build.json  every artifact's inputs (checkpoint hash, recipe, calibration
                              set hash, rewrites, contract, tool versions) and outputs

            The plan is printed first: what it builds, what is up to date, what it refuses and
            why. A rerun rebuilds only cells whose inputs changed (content hashes); --force
            rebuilds all. A cell that fails is recorded with its error and the rest still
            build (exit 1). A killed build leaves only complete files; rerun it to resume.
            """
        ),
        epilog=_section(
            f"""
            without --calib / --audit-data: a generated offline sample under OUT/inputs/
            ({SAMPLE_CALIB_IMAGES} calibration, {SAMPLE_AUDIT_IMAGES} audit images; unlabelled, so
            the report has agreement and SNR but no top-1).

            --jobs is not offered: on 2 cores each export already uses both through torch's
            intra-op threads, so exports side by side only contend.

            examples:
              edge-convnext build --random-init convnext-tiny-224 --out dist/
              edge-convnext build facebook/convnext-tiny-224 --calib train_subset/ \\
                  --audit-data imagenet/val --per-class 2 --out dist/
              edge-convnext build facebook/convnext-tiny-224 --targets tflite --recipes w8a8 \\
                  --calib train_subset/ --out dist/        # adds one cell to an existing dist/
            """
        ),
    )
    parser.add_argument("model", metavar="MODEL", help="Hub id, checkpoint dir, or seed")
    parser.add_argument("--out", default="dist", metavar="DIR", help="output folder (./dist)")
    parser.add_argument(
        "--targets",
        type=_names,
        metavar="LIST",
        help=f"comma-separated targets (default: all: {','.join(targets.names())})",
    )
    parser.add_argument(
        "--recipes",
        type=_names,
        metavar="LIST",
        help=f"comma-separated recipes for every target (default: {','.join(DEFAULT_RECIPES)} "
        "where supported); unsupported cells are listed as refused",
    )
    parser.add_argument(
        "--contract",
        default=contracts.DEFAULT.name,
        choices=sorted(contracts.CONTRACTS),
        help="input contract",
    )
    parser.add_argument(
        "--threads", type=_threads(), default=None, help="torch/runtime threads (all)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild every cell and the audit")
    parser.add_argument("--no-audit", action="store_true", help="build only, no report")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    quant = parser.add_argument_group("calibration and QAT")
    quant.add_argument("--calib", metavar="DIR", help="calibration images (default: generated)")
    quant.add_argument("--calib-size", type=_number(int, 1), metavar="N", help="(recipe's)")
    quant.add_argument("--calib-seed", type=_number(int, 0), default=0, help="pick seed (0)")
    quant.add_argument("--qat-data", metavar="DIR", help="QAT images: adds the *-qat recipes")
    quant.add_argument("--qat-steps", type=_number(int, 1), metavar="N", help="QAT steps")
    subset = parser.add_argument_group("audit")
    subset.add_argument(
        "--audit-data", metavar="DIR", help="ImageNet validation images (default: generated)"
    )
    choice = subset.add_mutually_exclusive_group()
    choice.add_argument("--per-class", type=_number(int, 1), metavar="K", help="K per class")
    choice.add_argument("--limit", type=_number(int, 1), metavar="N", help="N images in all")
    subset.add_argument("--layout", choices=LAYOUTS, help="dataset layout (default: detect)")
    _add_model_source(parser)
    parser.set_defaults(run=_run_build)


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a comma-separated list")
    return names


def _run_build(args) -> int:
    from pathlib import Path

    from . import build

    def path(value):
        return Path(value) if value else None

    options = build.Options(
        model=args.model,
        out=Path(args.out),
        targets=args.targets,
        recipes=args.recipes,
        random_init=args.random_init,
        seed=args.seed,
        calib=path(args.calib),
        calib_size=args.calib_size,
        calib_seed=args.calib_seed,
        audit_data=path(args.audit_data),
        per_class=args.per_class,
        limit=args.limit,
        layout=args.layout,
        qat_data=path(args.qat_data),
        qat_steps=args.qat_steps,
        contract=args.contract,
        threads=args.threads,
        force=args.force,
        audit=not args.no_audit,
        progress=not args.no_progress,
    )
    result = build.run(options, echo=lambda line: print(line, flush=True))
    if result.report is not None:
        print()
        print(build.summary(result.report))
        print(f"\nreport: {result.report.parent / 'report.md'}")
    print(f"build record: {result.build_json}")
    return result.exit_status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-convnext",
        formatter_class=_formatter,
        description=MAIN_DESCRIPTION,
        epilog=MAIN_EPILOG,
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_predict(commands)
    _add_export(commands)
    _add_inspect(commands)
    _add_audit(commands)
    _add_qat(commands)
    _add_build(commands)
    return parser


def _tolerate_unencodable_output() -> None:
    """File names that are not valid in the locale's encoding (undecodable bytes Python keeps
    as surrogates) print as backslash escapes under a strict stdout, never an exception that
    would lose the remaining results."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(ValueError, OSError):  # closed or detached: leave it
                reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (0, 1, 2 or 130: see the module docstring).

    A user error prints one ``edge-convnext: error: ...`` line and no traceback, and returns the
    ``exit_status`` of its class (``errors`` holds the rule); bad options are argparse's
    ``SystemExit(2)``.
    """
    _tolerate_unencodable_output()
    try:
        argv = sys.argv[1:] if argv is None else argv
        if argv[:1] == ["predict"]:
            args = _parse_predict(argv)
        elif argv[:2] == ["audit", "merge"]:
            args = _parse_audit_merge(argv)
        else:
            args = build_parser().parse_args(argv)
        return args.run(args)
    except EdgeConvnextError as error:
        # One write: the ranks of a torchrun job share stderr, their lines must not interleave.
        sys.stderr.write(f"edge-convnext: error: {error}\n")
        return error.exit_status
    except KeyboardInterrupt:
        print("edge-convnext: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
