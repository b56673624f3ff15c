"""Checkpoint -> ONNX (and TFLite) graphs with parity checks against PyTorch. (Issue 4; not built yet.)"""
