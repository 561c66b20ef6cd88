"""Recipes as data: what precision an artifact gets and how it is obtained.

Named like Qualcomm AI Hub's ``Precision`` (``w8a8`` = int8 weights, int8 activations). Frozen and
validated at construction, like coremltools' optimization configs; :func:`get` lists the valid
names on a typo. Which target supports which recipe is declared once, in
``edge_convnext.targets.SUPPORT``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from edge_convnext.errors import choices, lookup

METHODS = ("none", "ptq", "qat")
WEIGHT_TYPES = ("fp32", "fp16", "int8", "int4", "palette4", "palette6")
ACTIVATION_TYPES = ("fp32", "fp16", "int8", "int16")
OBSERVERS = ("histogram", "minmax")  # torchao observer classes (quantize.ptq.observer_class)
WEIGHT_ROUNDINGS = ("nearest", "gptq")
FALLBACK_WEIGHTS = ("fp32", "int8")
INTEGER_ACTIVATIONS = ("int8", "int16")


@dataclass(frozen=True)
class Recipe:
    """How to turn the fp32 model into an artifact's numerics.

    Attributes:
        name: short id used on the command line and in artifact names (``w8a8``).
        method: ``none`` (float), ``ptq`` (calibrated post-training) or ``qat``.
        weights: storage/compute type of weights.
        activations: compute type of activations.
        calibration_size: images used to calibrate activation ranges (static recipes only).
        observer: how static activation ranges are estimated from the calibration images:
            ``histogram`` (torchao's ``HistogramObserver``: the range minimising the L2
            quantization error of the observed histogram) or ``minmax`` (the observed extremes);
            None for recipes with no calibrated activations.
        layers: which convolutions/linears are quantized, as module path suffixes (``pwconv1``
            matches ``...layers.0.pwconv1``); empty: every layer the target's quantizer takes.
            The rest runs in float, in the same delegate.
        smoothquant_alpha: balance the channels of each block's ``pwconv2`` input with this
            SmoothQuant alpha before quantizing (``quantize.balance``; exact in float); None: off.
        weight_rounding: ``nearest`` grid step, or ``gptq`` (``quantize.gptq``: rounding that
            minimises each layer's output error on the calibration images).
        dynamic_activations: integer activations quantized per token (per pixel) at run time
            by the kernels (XNNPACK's ``qd8``), so no activation range is calibrated; False:
            static ranges from the calibration images (``observer``).
        fallback_weights: the weights of layers kept out of ``weights``: the recipe's
            ``fallback_layers`` and those ``--keep-float``/``--target-snr`` pick by sensitivity.
            ``fp32`` (left float) or ``int8`` (per output channel, for 4-bit recipes, where a
            float layer would cost 8x its int4 bytes).
        fallback_layers: layers of ``layers`` always built with ``fallback_weights``.
        description: one line for ``--help`` and reports.
    """

    name: str
    method: str
    weights: str
    activations: str
    description: str
    calibration_size: int = 0
    observer: str | None = None
    layers: tuple[str, ...] = ()
    smoothquant_alpha: float | None = None
    weight_rounding: str = "nearest"
    dynamic_activations: bool = False
    fallback_weights: str = "fp32"
    fallback_layers: tuple[str, ...] = ()

    def __post_init__(self):
        for attr, allowed in (
            ("method", METHODS),
            ("weights", WEIGHT_TYPES),
            ("activations", ACTIVATION_TYPES),
            ("weight_rounding", WEIGHT_ROUNDINGS),
            ("fallback_weights", FALLBACK_WEIGHTS),
        ):
            if getattr(self, attr) not in allowed:
                raise ValueError(
                    f"recipe {self.name!r}: {attr}={getattr(self, attr)!r}, expected one of "
                    f"{choices(allowed)}"
                )
        if self.dynamic_activations and (
            self.activations not in INTEGER_ACTIVATIONS or self.method != "ptq"
        ):
            raise ValueError(
                f"recipe {self.name!r}: dynamic_activations needs integer activations and ptq"
            )
        ranged = self.has_static_ranges
        if ranged != (self.observer is not None) or (ranged and self.observer not in OBSERVERS):
            expected = f"one of {choices(OBSERVERS)}" if ranged else "None (nothing calibrated)"
            raise ValueError(
                f"recipe {self.name!r}: observer={self.observer!r}, expected {expected}"
            )
        if self.needs_calibration != (self.calibration_size > 0):
            expected = ">= 1" if self.needs_calibration else "0 (nothing calibrated)"
            raise ValueError(f"recipe {self.name!r}: calibration_size must be {expected}")
        for attr in ("layers", "fallback_layers"):
            names = getattr(self, attr)
            if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"recipe {self.name!r}: {attr} must be a tuple of module names")
            object.__setattr__(self, attr, tuple(names))  # JSON gives lists
        if not set(self.fallback_layers) <= set(self.layers):
            raise ValueError(f"recipe {self.name!r}: fallback_layers must be among its layers")
        if self.fallback_layers and self.fallback_weights == "fp32":
            raise ValueError(
                f"recipe {self.name!r}: fp32 fallback_layers are layers left out of `layers`"
            )
        if self.weight_rounding != "nearest" and self.weights not in ("int8", "int4", "palette4"):
            raise ValueError(
                f"recipe {self.name!r}: GPTQ rounds int8, int4 or palette4 weights only"
            )
        alpha = self.smoothquant_alpha
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"recipe {self.name!r}: smoothquant_alpha must be in [0, 1] or None")

    @property
    def is_float(self) -> bool:
        return self.method == "none"

    @property
    def is_qat(self) -> bool:
        return self.method == "qat"

    @property
    def has_static_ranges(self) -> bool:
        """Integer activations with fixed ranges, observed on images (PTQ) or kept by QAT."""
        static = self.activations in INTEGER_ACTIVATIONS and not self.dynamic_activations
        return static and self.method in ("ptq", "qat")

    @property
    def needs_calibration(self) -> bool:
        """PTQ that learns from calibration images: static activation ranges, GPTQ's layer
        inputs or SmoothQuant's channel ranges."""
        learns = (
            self.has_static_ranges
            or self.weight_rounding == "gptq"
            or self.smoothquant_alpha is not None
        )
        return self.method == "ptq" and learns

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Recipe:
        return _from_dict(cls, data, "recipe")


# The 1x1 convolutions of the blocks (97% of ConvNeXt-T's MACs), the downsampling convolutions
# and the classifier: int8 there makes the file 0.26x and the model 3-4x faster under XNNPACK,
# while the 7x7 depthwise convolutions, norms, GELU and GRN stay float. Quantizing those too
# gains no speed and costs top-1 agreement (bench/FINDINGS.md).
INT8_LAYERS = ("pwconv1", "pwconv2", "downsampling_layer.1", "classifier")

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("fp32", "none", "fp32", "fp32", "float32 weights and activations (reference)"),
        Recipe("fp16", "none", "fp16", "fp16", "float16 weights and compute (Core ML's default)"),
        Recipe(
            "w8a8",
            "ptq",
            "int8",
            "int8",
            "static int8 convs: per-channel symmetric weights, per-tensor activations, calibrated",
            calibration_size=64,
            observer="histogram",
            layers=INT8_LAYERS,
            smoothquant_alpha=0.5,
            weight_rounding="gptq",
        ),
        Recipe(
            "w8a8-qat",
            "qat",
            "int8",
            "int8",
            "w8a8 fine-tuned with fake quantization (edge-convnext qat), then converted",
            observer="histogram",  # of the PTQ start point's ranges, which QAT keeps
            layers=INT8_LAYERS,
            smoothquant_alpha=0.5,
            weight_rounding="gptq",
        ),
        Recipe(
            "int8-full",
            "ptq",
            "int8",
            "int8",
            "every op int8 incl. LayerNorm/GELU/GRN, integer I/O (NPU, Edge TPU), calibrated",
            calibration_size=64,
            observer="minmax",  # ai-edge-quantizer's min_max_uniform_quantize
        ),
        Recipe(
            "w4a8",
            "ptq",
            "int4",
            "int8",
            "int4 weights in groups of 32 on the 1x1 convs and classifier, int8 downsampling "
            "convs, int8 activations quantized per pixel at run time (XNNPACK's 8da4w)",
            calibration_size=64,  # GPTQ's layer inputs
            layers=INT8_LAYERS,
            weight_rounding="gptq",
            dynamic_activations=True,
            fallback_weights="int8",
            # Their output is the residual stream: int4 there cost 1.7 dB, int8 nothing
            # (bench/FINDINGS.md), for 1.6 MB.
            fallback_layers=("downsampling_layer.1",),
        ),
        Recipe(
            "w8a16",
            "ptq",
            "int8",
            "int16",
            "int8 weights, int16 activations on every op ai-edge-quantizer's a16w8 takes (NPUs; "
            "Qualcomm AI Hub's ConvNeXt-T precision), calibrated",
            calibration_size=64,
            observer="minmax",  # ai-edge-quantizer's min_max_uniform_quantize
        ),
        Recipe("w8", "ptq", "int8", "fp16", "int8 weights (per-channel symmetric), fp16 compute"),
        Recipe(
            "w4",
            "ptq",
            "int4",
            "fp16",
            "int4 weights in blocks of 32 on the 1x1 convs and classifier, int8 downsampling "
            "convs, GPTQ-rounded (w4a8's weights), fp16 compute",
            calibration_size=64,  # GPTQ's layer inputs
            layers=INT8_LAYERS,
            weight_rounding="gptq",
            fallback_weights="int8",
            fallback_layers=("downsampling_layer.1",),  # as in w4a8
        ),
        Recipe(
            "palette4",
            "ptq",
            "palette4",
            "fp16",
            "4-bit k-means palettes (one per 8 output channels) on the 1x1 convs and classifier, "
            "GPTQ-rounded to their entries, int8 downsampling convs, fp16 compute",
            calibration_size=64,  # GPTQ's layer inputs
            layers=INT8_LAYERS,
            weight_rounding="gptq",
            fallback_weights="int8",
            fallback_layers=("downsampling_layer.1",),  # as in w4
        ),
        Recipe("palette6", "ptq", "palette6", "fp16", "6-bit k-means weight palette, fp16 compute"),
    )
}


def get(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        UnsupportedError: no such recipe; the message lists the valid names.
    """
    return lookup(RECIPES, name, "recipe")


@dataclass(frozen=True)
class QATConfig:
    """Training hyper-parameters (saved in the checkpoint; a resume must match them)."""

    steps: int = 200
    batch_size: int = 8
    # AdamW moves every weight by ~lr per step whatever its gradient; at 2e-5 the first step
    # raised ConvNeXt-T's distillation KL 100x (8e-5 -> 8e-3), at 1e-6 it falls (bench/FINDINGS.md).
    learning_rate: float = 1e-6
    weight_decay: float = 0.0
    temperature: float = 1.0
    label_weight: float = 0.0  # weight of cross-entropy on labels, when labels are given
    checkpoint_every: int = 25
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("steps, batch_size and checkpoint_every must be >= 1")

    @classmethod
    def from_dict(cls, data: dict) -> QATConfig:
        return _from_dict(cls, data, "QAT config")


def _from_dict(cls, data: dict, what: str):
    """``cls(**data)``, refusing keys that are not fields (listing the ones that are)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; expected {sorted(known)}")
    return cls(**data)
