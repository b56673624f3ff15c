"""``python -m convert.found --bundle DIR``: calibrate "is it there?" on val and record it in the bundle.

A robot asks for "the red ball" in a frame that has none; the answer should be ``found: false``.
The runtime says ``found`` when the peak mask probability reaches ``output.found_threshold``
(else the mask threshold). This command runs the bundle itself (``pi_runtime``, the precision
``auto`` picks) on val samples whose phrases name a present target and on ones naming an absent
one (RoboRef val has ~10 % absent phrases; ShapeRef's absent variants come from
``--data shapes-absent``), picks the threshold that maximises the worse of the two rates
(present answered found, absent answered not found), and writes it and both rates into the
manifest (re-hashed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pi_runtime.bundle import BundleError, load_manifest, write_manifest
from pi_runtime.segmenter import Segmenter

__all__ = ["choose_threshold", "main"]


def choose_threshold(scores: list[float], present: list[bool]) -> tuple[float, float, float]:
    """``(threshold, present_found %, absent_rejected %)`` maximising the smaller rate; ties go to
    the threshold nearest 0.5. Needs both present and absent samples."""
    s, p = np.asarray(scores, float), np.asarray(present, bool)
    if p.all() or not p.any():
        raise ValueError("calibration needs both present-target and absent-target samples")
    best = None
    for t in np.unique(np.concatenate([s, [0.5]])):
        t = float(np.clip(t, 1e-4, 1 - 1e-4))
        found = s >= t
        tpr, tnr = 100 * found[p].mean(), 100 * (~found[~p]).mean()
        key = (min(tpr, tnr), -abs(t - 0.5))
        if best is None or key > best[0]:
            best = (key, t, float(tpr), float(tnr))
    return best[1], best[2], best[3]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m convert.found", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    ap.add_argument("--bundle", required=True, type=Path, help="bundle directory (its manifest is updated)")
    ap.add_argument("--data", nargs="+", default=["roboref", "shapes", "shapes-absent"],
                    help="val sets to calibrate on (shapes, shapes-absent, roboref)")
    ap.add_argument("--n", type=int, default=200, help="samples per set (the first N of val)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dry-run", action="store_true", help="print the calibration, leave the manifest alone")
    args = ap.parse_args(argv)
    from eris.data.datasets import eval_samples

    try:
        seg = Segmenter(args.bundle, args.precision, args.threads)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scores, present = [], []
    for data in args.data:
        for s in eval_samples(data, "val", args.n):
            scores.append(seg.segment(s.image, s.phrase).score)
            present.append(bool(s.mask.any()))
    t, tpr, tnr = choose_threshold(scores, present)
    report = {"found_threshold": round(t, 4), "present_found": round(tpr, 2), "absent_rejected": round(tnr, 2),
              "n_present": int(sum(present)), "n_absent": int(len(present) - sum(present)), "data": args.data,
              "n_per_set": args.n, "precision": seg.precision}
    print(json.dumps(report))
    if not args.dry_run:
        manifest = load_manifest(args.bundle)
        manifest["output"]["found_threshold"] = report["found_threshold"]
        manifest.setdefault("metrics", {})["found"] = report
        write_manifest(args.bundle, manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
