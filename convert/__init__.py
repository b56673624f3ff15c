"""Checkpoint -> bundle: ONNX text and image graphs with parity checks against PyTorch.

``python -m convert --checkpoint DIR --out BUNDLE``; ``python -m convert.verify BUNDLE``.
"""
