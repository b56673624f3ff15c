"""``python -m pi_runtime``: segment what a phrase names in images.

    python -m pi_runtime --input photos/ --text "the red mug on the left" --output out/
    python -m pi_runtime --input jobs.jsonl --output out/      # lines {"image", "phrase", "id"?}

Writes ``out/<id>.png`` (0/255 mask at the image's size), ``out/<id>.overlay.jpg`` with
``--overlay``, and ``out/results.jsonl`` (found, score, bbox, centroid, area, timings). A rerun
skips finished items; bad files are listed at the end; exit code 0 only if every item succeeded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pi_runtime.batch import Item, unique_ids, expand_inputs, read_manifest, run_batch
from pi_runtime.bundle import BundleError
from pi_runtime.segmenter import Segmenter


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pi_runtime", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                 epilog="Camera streaming, bench and doctor are not built yet.")
    ap.add_argument("--input", nargs="+", required=True,
                    help="image files, directories, glob patterns, or one manifest .jsonl")
    ap.add_argument("--text", help="the phrase (required unless --input is a manifest)")
    ap.add_argument("--output", type=Path, required=True, help="output directory")
    ap.add_argument("--overlay", action="store_true", help="also write <id>.overlay.jpg with the mask drawn in")
    ap.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the one shipped in the package)")
    ap.add_argument("--precision", choices=["auto", "fp32", "int8"], default="auto",
                    help="image graph precision; auto = int8 where the CPU has int8 dot-product instructions")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: all cores)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    errors: list[str] = []
    if len(args.input) == 1 and args.input[0].endswith(".jsonl"):
        manifest = Path(args.input[0])
        if not manifest.is_file():
            print(f"error: {manifest}: no such manifest", file=sys.stderr)
            return 2
        items, errors = read_manifest(manifest)
    else:
        if not args.text or not args.text.strip():
            print("error: --text: the phrase is empty (give --text \"the red mug\")", file=sys.stderr)
            return 2
        paths = expand_inputs(args.input)
        if not paths:
            print(f"error: --input {' '.join(args.input)}: no images found", file=sys.stderr)
            return 2
        items = [Item(i, p, args.text) for i, p in zip(unique_ids(paths), paths)]
    try:
        seg = Segmenter.from_bundle(args.bundle, args.precision, args.threads)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = run_batch(seg, items, args.output, overlays=args.overlay, errors=errors)
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}))
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
