"""LiteRT (TFLite) graphs behind the two calls of onnxruntime's session API the runtime uses.

``ai_edge_litert`` (the maintained package; aarch64 and x86-64 wheels, numpy 2) is tried first,
then ``tflite_runtime`` (the older package, still what 32-bit Pi OS has), whose 2.14 wheel fails
under numpy 2 with ``AttributeError: _ARRAY_API not found`` - so it is refused up front with that
reason rather than crashing at the first frame. Both apply the XNNPACK delegate by default,
with ``num_threads``.

TFLite graphs are static-shaped: the phrase is padded to the bundle's ``max_tokens`` and the
frame letterboxed into ``graphs.litert.input_hw``. The manifest records each graph's signature
names, shapes and dtypes; :class:`LiteRTGraph` checks the file against them when it loads it, so
a truncated, swapped or mis-described ``.tflite`` is refused, naming the file, before any frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pi_runtime.bundle import BundleError

__all__ = ["BackendUnavailable", "LiteRTGraph", "interpreter_package", "load_interpreter", "INSTALL_HINT"]

TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8 of every .tflite
INSTALL_HINT = "pip install ai-edge-litert (on 32-bit Pi OS: pip install tflite-runtime 'numpy<2')"


class BackendUnavailable(RuntimeError):
    """The asked-for backend's package is not installed (or cannot work here); says what to install."""


def load_interpreter():
    """``(Interpreter class, package name)``; :class:`BackendUnavailable` saying what to install."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:
        raise BackendUnavailable(f"the litert backend needs LiteRT: {INSTALL_HINT}") from None
    if int(np.__version__.split(".")[0]) >= 2:
        raise BackendUnavailable(f"tflite_runtime is installed but fails under numpy {np.__version__} "
                                 "(_ARRAY_API not found): pip install ai-edge-litert, or pip install 'numpy<2'")
    return Interpreter, "tflite_runtime"


def interpreter_package() -> str | None:
    """The LiteRT package that would be used, or None."""
    try:
        return load_interpreter()[1]
    except BackendUnavailable:
        return None


class LiteRTGraph:
    """One ``.tflite`` graph: ``run(output_names | None, feeds) -> [arrays]`` like an onnxruntime
    session, with feeds and outputs by the manifest's names."""

    def __init__(self, path: Path, spec: dict, threads: int, role: str):
        self.path, self.spec = Path(path), spec
        head = self.path.read_bytes()[:8] if self.path.is_file() else b""
        if head[4:8] != TFLITE_IDENTIFIER:
            raise BundleError(f"{self.path}: not a .tflite graph (no {TFLITE_IDENTIFIER.decode()} identifier)")
        interpreter_cls, self.package = load_interpreter()
        try:
            self._interpreter = interpreter_cls(model_path=str(self.path), num_threads=threads)
            self._runner = self._interpreter.get_signature_runner()
            inputs, outputs = self._runner.get_input_details(), self._runner.get_output_details()
        except Exception as exc:  # noqa: BLE001 - LiteRT raises ValueError/RuntimeError for bad files
            raise BundleError(f"{self.path}: LiteRT cannot load it ({exc})") from exc
        self._inputs = dict(zip(spec["inputs"], spec["signature_inputs"]))
        self._outputs = dict(zip(spec["outputs"], spec["signature_outputs"]))
        want_in = {s: (list(shape), dt) for s, shape, dt in
                   zip(spec["signature_inputs"], spec["input_shapes"], spec["input_dtypes"])}
        got_in = {k: (list(map(int, v["shape"])), np.dtype(v["dtype"]).name) for k, v in inputs.items()}
        got_out = {k: list(map(int, v["shape"])) for k, v in outputs.items()}
        want_out = dict(zip(spec["signature_outputs"], map(list, spec["output_shapes"])))
        if got_in != want_in or got_out != want_out:
            raise BundleError(f"{self.path}: not the {role} graph manifest.json describes: its signature "
                              f"{got_in} -> {got_out} differs from {want_in} -> {want_out}")
        self._dtypes = {s: np.dtype(dt) for s, (_, dt) in want_in.items()}

    def run(self, output_names, feeds: dict) -> list[np.ndarray]:
        args = {sig: np.ascontiguousarray(feeds[name], self._dtypes[sig]) for name, sig in self._inputs.items()}
        out = self._runner(**args)
        return [out[self._outputs[n]] for n in (output_names or self.spec["outputs"])]
