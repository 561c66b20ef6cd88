"""edge_convnext: ConvNeXt-tiny V1/V2 to Core ML, TFLite/LiteRT and ExecuTorch, audited.

Torch-free at import: the Raspberry Pi path (preprocess, runners of artifacts, audit) needs only
numpy, Pillow and a runtime.
"""

__version__ = "0.1.0"
