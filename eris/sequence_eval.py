"""Live-mode accuracy on rendered camera sweeps: does the mask stay on the named object?

A val scene of RoboRef is swept by the camera (yawing about the table centre, as a robot driving
past), each frame is segmented through the runtime with the scene's phrase, and each frame's mask
is scored against the target's visible pixels in that frame. Besides mIoU it counts *switches*:
consecutive frames whose masks lie mostly on different objects — the flicker a robot following
the mask would act on. Each frame's logits are computed once and every region rule is applied to
them, so the rules are compared on the same frames.

    python -m eris.sequence_eval --n 60 --frames 12 --sweep-deg 15 --bonus 1 1.5 2

The phrase was decided on the middle view; a wide sweep can change which object "the leftmost
mug" is, so keep the sweep small when reading location and ordinal phrases.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm


@dataclass
class Tally:
    """One region rule's running totals."""

    ious: list[float] = field(default_factory=list)
    switches: int = 0
    pairs: int = 0            # consecutive frames both with a mask on some object
    seq_switched: int = 0
    sequences: int = 0
    by_kind: dict = field(default_factory=dict)
    switches_by_kind: dict = field(default_factory=dict)   # kind -> [switches, pairs]

    def summary(self) -> dict:
        return {"mIoU": round(100 * float(np.mean(self.ious)), 2) if self.ious else None,
                "switches_per_100_pairs": round(100 * self.switches / max(self.pairs, 1), 2),
                "sequences_with_a_switch": f"{self.seq_switched}/{self.sequences}",
                "by_kind": {k: round(100 * float(np.mean(v)), 2) for k, v in sorted(self.by_kind.items())},
                "switches_by_kind": {k: f"{sw}/{pairs}" for k, (sw, pairs) in sorted(self.switches_by_kind.items())}}


def sweep_frames(scene, frames: int, sweep_deg: float, long_side: int = 640):
    """Yields ``(image, object masks)`` of ``frames`` views yawing -sweep..+sweep about the
    camera's target (the middle view is the one the phrase was decided on)."""
    from eris.data.roboref import render

    eye0, target = np.array(scene.camera["eye"]), np.array(scene.camera["target"])
    offset = eye0 - target
    try:
        for k in range(frames):
            a = math.radians(-sweep_deg + 2 * sweep_deg * k / max(frames - 1, 1))
            rot = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
            scene.camera["eye"] = (target + rot @ offset).tolist()
            yield render(scene, long_side)
    finally:
        scene.camera["eye"] = eye0.tolist()


def identity(mask: np.ndarray, masks: list[np.ndarray]) -> int | None:
    """The object most of ``mask`` lies on, or None for an empty mask or one on no object."""
    if not mask.any():
        return None
    overlap = [int((mask & m).sum()) for m in masks]
    best = int(np.argmax(overlap))
    return best if overlap[best] > 0 else None


def evaluate_sequences(seg, n: int, frames: int, sweep_deg: float, rules: dict, seed: int = 0,
                       min_pixels: int = 200, start: int = 0) -> dict:
    """``rules``: name -> bonus (None: each frame chosen afresh). Returns name -> :class:`Tally`."""
    from eris.data.roboref import get_sample
    from pi_runtime.regions import RegionTrack

    tallies = {name: Tally() for name in rules}
    done = 0
    bar = tqdm(total=n, desc="sequences", unit="seq")
    index = start
    while done < n:
        s = get_sample("val", index, seed, long_side=640)
        index += 1
        if s.target is None:  # absent phrases have no object to stay on
            continue
        tracks = {name: RegionTrack(bonus) if bonus is not None else None for name, bonus in rules.items()}
        last = {name: None for name in rules}
        switched = {name: False for name in rules}
        for image, masks in sweep_frames(s.scene, frames, sweep_deg):
            truth = masks[s.target]
            if truth.sum() < min_pixels:  # the target left the frame or hides behind another
                continue
            runs = {}  # this frame's graph runs, shared by the phrase and its reference as in _result
            raw = seg._phrase_cells(image, s.phrase, runs)  # once per frame; every rule reads the same logits
            relation, ref_cells, _ = seg._reference_cells(image, s.phrase, runs)  # a relation's reference, once too
            for name, track in tracks.items():
                reference = seg._reference_region(relation, ref_cells, track, image, raw[1])  # as live mode would
                mask = seg._result_from_cells(*raw, s.phrase, track, reference, image).mask
                t = tallies[name]
                union = (mask | truth).sum()
                iou = float((mask & truth).sum() / union) if union else 0.0
                t.ious.append(iou)
                t.by_kind.setdefault(s.kind, []).append(iou)
                who = identity(mask, masks)
                if who is not None and last[name] is not None:
                    t.pairs += 1
                    kind_tally = t.switches_by_kind.setdefault(s.kind, [0, 0])
                    kind_tally[1] += 1
                    if who != last[name]:
                        t.switches += 1
                        kind_tally[0] += 1
                        switched[name] = True
                last[name] = who
        for name in rules:
            tallies[name].sequences += 1
            tallies[name].seq_switched += switched[name]
        done += 1
        bar.update()
    bar.close()
    return tallies


def main(argv: list[str] | None = None) -> int:
    from pi_runtime.segmenter import Segmenter

    ap = argparse.ArgumentParser(prog="python -m eris.sequence_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=None, help="runtime bundle (default: the shipped one)")
    ap.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=60, help="sequences: the first N RoboRef val scenes with a present target")
    ap.add_argument("--start", type=int, default=0, help="the first val scene to consider (hold some out to confirm a choice)")
    ap.add_argument("--frames", type=int, default=12, help="frames per sweep")
    ap.add_argument("--sweep-deg", type=float, default=15.0, help="the camera yaws from -this to +this degrees")
    ap.add_argument("--no-where-words", dest="where_words", action="store_false",
                    help="the runtime's --no-where-words: keep the model's own region even for 'leftmost', "
                         "'left of the duck'")
    ap.add_argument("--no-category-check", dest="category_check", action="store_false",
                    help="the runtime's --no-category-check: do not weigh candidates by the bundle's crop classifier")
    ap.add_argument("--no-plain-pass", dest="plain_pass", action="store_false",
                    help="the runtime's --no-plain-pass: do not also run the phrase's plain description")
    ap.add_argument("--no-generic-pass", dest="generic_pass", action="store_false",
                    help="the runtime's --no-generic-pass: do not also run the phrase's generic description")
    ap.add_argument("--no-grow", dest="grow", action="store_false",
                    help="the runtime's --no-grow: keep the chosen region as the threshold cuts it")
    ap.add_argument("--no-refine", dest="refine", action="store_false",
                    help="the runtime's --no-refine: keep the logits and the outline as the model draws them")
    ap.add_argument("--bonus", type=float, nargs="+", default=[1.5],
                    help="RegionTrack bonuses to compare with choosing each frame afresh")
    args = ap.parse_args(argv)
    seg = Segmenter.from_bundle(args.bundle, args.precision, args.threads, where_words=args.where_words,
                                category_check=args.category_check, plain_pass=args.plain_pass,
                                grow=args.grow, generic_pass=args.generic_pass, refine=args.refine)
    rules = {"fresh": None, **{f"sticky x{b:g}": b for b in args.bonus}}
    tallies = evaluate_sequences(seg, args.n, args.frames, args.sweep_deg, rules, start=args.start)
    print(json.dumps({"args": vars(args), **{name: t.summary() for name, t in tallies.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
