"""``python -m pi_runtime``: segment what a phrase names in images, a camera stream or a replay.

    python -m pi_runtime --input photos/ --text "the red mug on the left" --output out/
    python -m pi_runtime --input jobs.jsonl --output out/      # lines {"image", "phrase", "id"?}
    python -m pi_runtime --camera --text "the red mug" [--json] [--serve] [--save DIR]
    python -m pi_runtime --source video.mp4|frames/|/dev/video0 --text "the red mug" --json
    python -m pi_runtime --input photos/ --text "the red mug" --output out/ --backend litert   # .tflite graphs
    python -m pi_runtime bench [--size 640] [--precision int8] [--compare]
    python -m pi_runtime doctor

Batch mode writes ``out/<id>.png`` (0/255 mask at the image's size), ``out/<id>.overlay.jpg`` with
``--overlay``, and ``out/results.jsonl``; a rerun skips finished items; bad files are listed at the
end; exit code 0 only if every item succeeded. Live mode (``--camera``/``--source``) writes one JSON
line per frame with ``--json`` (frame, time, phrase, found, score, bbox, centroid, area,
latency_ms), serves an MJPEG preview with a phrase box with ``--serve``, and takes a new phrase
from each line typed on the terminal. Exit codes: 0 done, 1 some items failed or the camera was
lost, 2 bad arguments, bundle or camera.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pi_runtime.batch import BatchLockedError, DiskFullError, Item, expand_inputs, read_manifest, run_batch
from pi_runtime.phrases import PhraseError, check_phrase
from pi_runtime.preprocess import DEFAULT_MAX_PIXELS
from pi_runtime.regions import REGION_MODES
from pi_runtime.bundle import BundleError
from pi_runtime.litert import BackendUnavailable
from pi_runtime.segmenter import BACKENDS, Segmenter


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pi_runtime", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="subcommands: 'python -m pi_runtime bench --help', "
                                        "'python -m pi_runtime doctor --help'")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--input", nargs="+", help="batch: image files, directories, glob patterns, or one manifest .jsonl")
    what.add_argument("--camera", action="store_true", help="live: the Raspberry Pi camera (picamera2)")
    what.add_argument("--source", help="live: replay a video file, a directory of images, or a webcam /dev/videoN")
    ap.add_argument("--text", help="the phrase (required unless --input is a manifest)")
    ap.add_argument("--output", type=Path, help="batch: output directory")
    ap.add_argument("--overlay", action="store_true", help="batch: also write <id>.overlay.jpg with the mask drawn in")
    ap.add_argument("--json", action="store_true", help="live: one JSON line per frame on stdout")
    ap.add_argument("--serve", action="store_true", help="live: MJPEG preview and a phrase box over HTTP")
    ap.add_argument("--host", default="127.0.0.1", help="live: --serve address (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8080, help="live: --serve port (0: any free port)")
    ap.add_argument("--save", type=Path, help="live: write each frame's mask to DIR/<frame>.png")
    ap.add_argument("--frames", type=int, default=None, help="live: stop after this many frames")
    ap.add_argument("--capture-size", default="640x480",
                    help="live: camera frame size WxH (default 640x480, the model's 4:3 input; no resize on the CPU)")
    ap.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the one shipped in the package)")
    add_backend_arguments(ap)
    ap.add_argument("--long-side", type=int, default=None,
                    help="model input long side (default: the bundle's, 640; 320 is ~4x faster and less exact; "
                         "ONNX graphs only: .tflite graphs are static)")
    ap.add_argument("--regions", choices=REGION_MODES, default="best",
                    help="best (default): the mask keeps the one region the model is surest of (a phrase names one "
                         "object; README, 'One object per phrase'); all: every pixel over the threshold")
    ap.add_argument("--flip-average", action="store_true",
                    help="also segment the mirrored image with left/right swapped in the phrase and average: "
                         "about twice the time per image for ~+0.4 mIoU on RoboRef and ShapeRef val (README, 'Flip "
                         "averaging' and 'Session 15')")
    ap.add_argument("--no-where-words", dest="where_words", action="store_false",
                    help="with --regions best: keep the region the model is surest of even when the phrase says "
                         "where its object is (default: 'leftmost', 'second from the right', 'in the middle' "
                         "choose among the candidate regions by place, 'nearest' / 'farthest' by how low they reach "
                         "in the frame, 'biggest' / 'small' by area over how far below the horizon a region "
                         "stands, and 'left of the duck' asks for the duck alone and keeps the candidate left of "
                         "it; README, 'Session 15: where-words and relations', 'Session 18', 'Session 22')")
    ap.add_argument("--no-category-check", dest="category_check", action="store_false",
                    help="with --regions best: do not ask the bundle's crop classifier which candidate region is "
                         "of the category the phrase names (default, where the bundle has one: candidates are "
                         "weighed by it, and a phrase none of them fits comes back not found; README, 'Session 16: "
                         "the category check')")
    ap.add_argument("--no-plain-pass", dest="plain_pass", action="store_false",
                    help="with --regions best and where-words: do not also run the phrase's plain description "
                         "(default: 'the second mug from the left', 'the duck farthest from me' or 'the cube left "
                         "of the duck' is also run as 'the mug', 'the duck', 'the cube' and the larger logit kept, "
                         "so objects the full phrase missed are candidates too: one more image-graph run for such "
                         "phrases; README, 'Session 18')")
    ap.add_argument("--no-generic-pass", dest="generic_pass", action="store_false",
                    help="with the bundle's category check: do not also run a phrase naming a category as its generic "
                         "description (default: 'the white duck' is also run as 'the white thing', 'the leftmost mug' "
                         "as 'the thing', the larger logit kept, and the category check tells the duck or the mug "
                         "among the things: one more image-graph run for such phrases, in place of the plain "
                         "description's; README, 'Session 19')")
    ap.add_argument("--no-grow", dest="grow", action="store_false",
                    help="with --regions best: keep the chosen region as the threshold cuts it (default: it also "
                         "takes in the cells joined to it a little under the threshold, unless that would join it to "
                         "another candidate: the model often marks only the surest part of an object; README, "
                         "'Session 19')")
    ap.add_argument("--no-refine", dest="refine", action="store_false",
                    help="keep the logits and the mask's outline as the model draws them (default: a guided filter "
                         "pulls both to the frame's colour edges, about 16 ms more a phrase on a 2-core x86; "
                         "README, 'Session 21')")
    ap.add_argument("--no-sticky", dest="sticky", action="store_false",
                    help="live, with --regions best: choose each frame's region afresh (default: stay on the object "
                         "kept on the last frame unless another scores clearly higher; README, 'Live mode')")
    ap.add_argument("--max-pixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                    help="refuse images larger than this many megapixels, from the header, before decoding "
                         f"(default {DEFAULT_MAX_PIXELS / 1e6:g}: what a 4 GB Pi can decode beside the model)")
    return ap


def add_backend_arguments(ap: argparse.ArgumentParser) -> None:
    """``--backend``, ``--precision`` and ``--threads``: the same on every command."""
    ap.add_argument("--backend", choices=list(BACKENDS), default="auto",
                    help="inference package: onnxruntime (.onnx graphs) or litert (.tflite graphs, ai-edge-litert or "
                         "tflite-runtime); auto = whichever ran faster when both were timed on this machine, where "
                         "both can run the bundle, else the one that can")
    ap.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"], default="auto",
                    help="image graph precision (fp16: .tflite only); auto = whichever ran faster when the bundle's "
                         "graphs were timed on this machine (the first run times them and caches the choice)")
    ap.add_argument("--threads", type=int, default=None, help="inference threads (default: physical cores)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from pi_runtime.bench import main as bench_main
        return bench_main(argv[1:])
    if argv[:1] == ["doctor"]:
        from pi_runtime.doctor import main as doctor_main
        return doctor_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.max_pixels <= 0:
        print(f"error: --max-pixels {args.max_pixels:g}: must be positive", file=sys.stderr)
        return 2
    if args.camera or args.source:
        return run_live(args)
    # Arguments and inputs are checked before the model loads (seconds on a Pi).
    if args.output is None:
        print("error: --output: batch mode needs an output directory", file=sys.stderr)
        return 2
    errors: list[str] = []
    if len(args.input) == 1 and args.input[0].endswith(".jsonl"):
        manifest = Path(args.input[0])
        if not manifest.is_file():
            print(f"error: {manifest}: no such manifest", file=sys.stderr)
            return 2
        items, errors = read_manifest(manifest)
    else:
        try:
            phrase = check_phrase(args.text if args.text is not None else "")
        except PhraseError as exc:
            print(f"error: --text: {exc} (give --text \"the red mug\")", file=sys.stderr)
            return 2
        paths = expand_inputs(args.input)
        if not paths:
            print(f"error: --input {' '.join(args.input)}: no images found", file=sys.stderr)
            return 2
        items = [Item(None, p, phrase) for p in paths]
    try:
        seg = Segmenter.from_bundle(args.bundle, args.precision, args.threads, args.long_side, args.backend,
                                    regions=args.regions, flip_average=args.flip_average,
                                    where_words=args.where_words, category_check=args.category_check,
                                    plain_pass=args.plain_pass, grow=args.grow, refine=args.refine,
                                    generic_pass=args.generic_pass)
    except (BundleError, BackendUnavailable, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_batch(seg, items, args.output, overlays=args.overlay, errors=errors,
                            max_pixels=int(args.max_pixels * 1e6))
    except BatchLockedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DiskFullError as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    accuracy = summary.get("accuracy")
    if accuracy:
        print(f"accuracy: mIoU {accuracy['mIoU']:.2f} over {accuracy['n']} items with ground truth", file=sys.stderr)
        for kind, m in accuracy.get("by_kind", {}).items():
            print(f"  {kind:<16} n={m['n']:<5} mIoU={m['mIoU']:.2f}", file=sys.stderr)
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}))
    return 0 if summary["failed"] == 0 else 1


def run_live(args) -> int:
    from pi_runtime.sources import CameraError, open_source
    from pi_runtime.stream import PhraseBox, run_stream, watch_stdin

    try:
        box = PhraseBox(args.text or "")
    except PhraseError as exc:
        print(f"error: --text: {exc}", file=sys.stderr)
        return 2
    try:
        width, height = (int(v) for v in args.capture_size.lower().split("x"))
    except ValueError:
        print(f"error: --capture-size {args.capture_size}: expected WxH, e.g. 640x480", file=sys.stderr)
        return 2
    try:  # the source first: a missing camera is reported before the model loads
        source = open_source(args.source, args.camera, (width, height))
    except (CameraError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        seg = Segmenter.from_bundle(args.bundle, args.precision, args.threads, args.long_side, args.backend,
                                    regions=args.regions, flip_average=args.flip_average,
                                    where_words=args.where_words, category_check=args.category_check,
                                    plain_pass=args.plain_pass, grow=args.grow, refine=args.refine,
                                    generic_pass=args.generic_pass)
    except (BundleError, BackendUnavailable, ValueError) as exc:
        source.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    preview = None
    if args.serve:
        from pi_runtime.serve import PreviewServer

        try:
            preview = PreviewServer(box, args.host, args.port).start()
        except OSError as exc:
            source.close()
            print(f"error: --serve {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 2
        print(f"preview: {preview.url}", file=sys.stderr, flush=True)
    watch_stdin(box)
    try:
        summary = run_stream(seg, source, box, json_out=sys.stdout if args.json else None, preview=preview,
                             save_dir=args.save, max_frames=args.frames, sticky=args.sticky)
    except CameraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if preview:
            preview.close()
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
