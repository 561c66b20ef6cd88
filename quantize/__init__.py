"""Quantization recipes (data) and drivers (PTQ, QAT). Installed as ``edge_convnext.quantize``.

``recipes`` is torch-free so the CLI, docs and tests can list recipes anywhere.
"""
