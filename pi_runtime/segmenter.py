"""The predictor: a bundle in, numpy masks out (numpy, pillow, tokenizers, onnxruntime).

    seg = Segmenter.from_bundle("path/to/bundle")
    result = seg.segment("photo.jpg", "the red mug on the left")
    result.mask, result.score, result.bbox

The phrase's tensors are computed once by the text graph and cached (a camera stream keeps its
phrase for thousands of frames); each image runs the image graph only.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from pi_runtime.bundle import BundleError, check_files, check_graph_io, load_manifest, phrase_feeds, phrase_tensors
from pi_runtime.categories import CategoryCheck, phrase_category
from pi_runtime.litert import interpreter_package
from pi_runtime.phrases import PhraseError, check_phrase, mirror_phrase
from pi_runtime.plain import generic_description, plain_description
from pi_runtime.precision import cpu_has_int8_dot
from pi_runtime.preprocess import letterbox, letterbox_into, load_image, to_rgb_array
from pi_runtime.refine import cell_guide, guide_cells, refine_mask
from pi_runtime.regions import GROW_MARGIN, REGION_MODES, RegionTrack, best_region, grow_region
from pi_runtime.relations import choose_related, parse_relation, without_reference
from pi_runtime.spatial import parse_selector

__all__ = ["Segmenter", "Result", "session_options", "cpu_has_int8_dot", "PhraseError", "choose_backend", "BACKENDS"]

TEXT_CACHE_SIZE = 32


@dataclass
class Result:
    phrase: str
    probability: np.ndarray            # H x W float32 in [0, 1], the image's own size
    mask: np.ndarray                   # H x W bool: probability >= threshold (regions="all"), else one region,
                                       # grown a little under the threshold (pi_runtime.regions.grow_region);
                                       # its outline then moved to the frame's edges (pi_runtime.refine)
    score: float                       # peak probability: how sure the model is the phrase matches something
    found: bool                        # score >= found_threshold (calibrated on val where the bundle says)
    bbox: tuple[int, int, int, int] | None   # x0, y0, x1, y1 (exclusive), None if nothing found
    centroid: tuple[float, float] | None     # x, y in pixels
    area: float                        # mask pixels / image pixels
    timings: dict = field(default_factory=dict)  # milliseconds: text, image, post

    def to_json(self) -> dict:
        return {"phrase": self.phrase, "found": self.found, "score": round(self.score, 4),
                "bbox": list(self.bbox) if self.bbox else None,
                "centroid": [round(c, 1) for c in self.centroid] if self.centroid else None,
                "area": round(self.area, 6), **{f"{k}_ms": round(v, 2) for k, v in self.timings.items()}}


def physical_cores() -> int:
    """Physical cores (SMT siblings counted once); ``os.cpu_count()`` where /proc/cpuinfo does not say."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(1, os.cpu_count() or 1)
    cores, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            cores.add((phys, value.strip()))
    return len(cores) or max(1, os.cpu_count() or 1)


def default_bundle_dir() -> Path:
    return Path(__file__).resolve().parent / "bundles" / "default"


BACKENDS = ("auto", "onnxruntime", "litert")


def onnxruntime_importable() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(bundle: Path, manifest: dict, asked: str) -> str:
    """``onnxruntime`` or ``litert``: what ``asked`` allows with this bundle's graphs and the
    installed packages. For ``auto`` this is onnxruntime where it can run the bundle, else
    LiteRT; where both can, :meth:`Segmenter._auto_backend` then times them and keeps the faster
    (onnxruntime on the x86 machines measured; no Pi has been measured yet)."""
    from pi_runtime.litert import BackendUnavailable, load_interpreter

    if asked not in BACKENDS:
        raise ValueError(f"backend {asked!r}: choose one of {', '.join(BACKENDS)}")
    has_onnx, has_lite = "text" in manifest["graphs"], "litert" in manifest["graphs"]
    ort_ok = asked != "litert" and has_onnx and onnxruntime_importable()
    if asked == "onnxruntime" or asked == "auto" and has_onnx and ort_ok:
        if not has_onnx:
            raise BundleError(f"{bundle}: has no ONNX graphs (only .tflite: use --backend litert)")
        if not ort_ok:
            raise BackendUnavailable("the onnxruntime backend needs onnxruntime: pip install onnxruntime")
        return "onnxruntime"
    if not has_lite:
        if asked == "litert":
            raise BundleError(f"{bundle}: has no .tflite graphs (add them with python -m convert.tflite --bundle)")
        raise BackendUnavailable("the bundle's ONNX graphs need onnxruntime: pip install onnxruntime")
    load_interpreter()  # raises, saying which package to install
    return "litert"


def session_options(threads: int, image_graph: bool = False):
    """The onnxruntime session options the runtime's graphs run with (``eris.scaling`` uses them too)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # Spinning threads would starve the camera grabber and the HTTP server of CPU.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if image_graph:
        # Keep the memory arena (turning it off cost 25 % speed) but not the memory pattern: the
        # pre-planned pattern holds every activation's peak at once (peak RSS of a 640x480 run:
        # 294 MB with it, 223 MB without, at the same 62 ms per frame on this machine).
        options.enable_mem_pattern = False
    return options


class _Weighing:
    """One frame's category check as ``best_region``'s ``weigh``: weighs the regions' scores by
    p(noun) and remembers each region's p, for the found decision on the region kept."""

    def __init__(self, check: CategoryCheck, image: np.ndarray, noun: str, cell_hw: tuple[float, float],
                 picking: bool = False):
        self.check, self.image, self.noun, self.cell_hw, self.picking = check, image, noun, cell_hw, picking
        self.labels = self.p = None
        self.origin = (0, 0)
        self.memo = {}   # p by region: a region weighed again after a split is not asked again

    def __call__(self, labels: np.ndarray, scores: np.ndarray, origin) -> np.ndarray:
        self.labels, self.origin = labels, origin
        weighed, self.p = self.check.weigh(self.image, self.noun, labels, scores, origin, self.cell_hw, self.picking,
                                           self.memo)
        return weighed

    def rejected(self) -> list[int]:
        """The labels (1..n) of the last call's regions whose p is under the check's ``found_min``,
        which ``best_region`` splits where two objects joined (:func:`pi_runtime.regions.split_regions`)."""
        if self.p is None:
            return []
        with np.errstate(invalid="ignore"):
            return [int(i) + 1 for i in np.nonzero(self.p < self.check.found_min)[0]]

    def likely(self, labels, p: float) -> bool:
        """Whether any of ``labels`` (1..n, of the last call's regions) was asked and reached ``p``."""
        got = self.p[np.asarray(labels, int) - 1] if self.p is not None and len(labels) else np.array([])
        return bool((got >= p).any()) if got.size else False

    def chosen_p(self, keep: np.ndarray) -> float:
        """p(noun) of the region ``keep`` holds (1 where it was not asked or there was none)."""
        if self.labels is None or not keep.any():
            return 1.0
        r0, c0 = self.origin
        inside = self.labels[keep[r0:r0 + self.labels.shape[0], c0:c0 + self.labels.shape[1]]]
        p = self.p[int(inside[0]) - 1] if len(inside) and inside[0] > 0 else np.nan
        return 1.0 if np.isnan(p) else float(p)


class Segmenter:
    def __init__(self, bundle: str | Path, precision: str = "auto", threads: int | None = None,
                 long_side: int | None = None, backend: str = "auto", regions: str = "best",
                 flip_average: bool = False, where_words: bool = True, category_check: bool = True,
                 plain_pass: bool = True, grow: bool = True, generic_pass: bool = True, refine: bool = True):
        from tokenizers import Tokenizer

        if regions not in REGION_MODES:
            raise ValueError(f"regions {regions!r}: choose {' or '.join(REGION_MODES)}")
        self.regions = regions  # "best": the mask keeps one region (pi_runtime.regions); "all": every pixel
        # Also run the mirrored image with the mirrored phrase and average the logits: ~2x the
        # image graph's time for a little accuracy (README, "Session 14: flip averaging").
        self.flip_average = bool(flip_average)
        # With regions="best": a where-word of the phrase ("leftmost", "second from the right") or
        # a relation to another object ("left of the duck") picks among the candidate regions
        # (pi_runtime.spatial, pi_runtime.relations; README, "Session 15: where-words and relations").
        self.where_words = bool(where_words)
        # With regions="best" and where-words: a phrase that singles its object out by place,
        # depth, size or a relation is also run as its plain description ("the mug"), and the
        # larger logit of the two kept cell by cell, so objects the full phrase missed are
        # candidates too (pi_runtime.plain; README, "Session 18"): one more image-graph run.
        self.plain_pass = bool(plain_pass)
        # With the category check: a phrase naming a category is also run as its generic
        # description ("the white duck" -> "the white thing"), instead of the plain one, and the
        # check tells the duck among the things (pi_runtime.plain; README, "Session 19").
        self.generic_pass = bool(generic_pass)
        # With regions="best": the kept region takes in the cells joined to it a little under the
        # threshold (pi_runtime.regions.grow_region; README, "Session 19"); 0 keeps it as cut.
        self.grow_margin = GROW_MARGIN if grow else 0.0
        # The frame guides the logits: the stride-grid logits follow its colour edges before the
        # candidate regions are cut, and the kept mask's outline is moved to them (pi_runtime.refine:
        # a guided filter with the frame as the guide; README, "Session 21"); False keeps the
        # model's logits and the upsampled outline.
        self.refine = bool(refine)

        self.bundle = Path(bundle)
        self.manifest = load_manifest(self.bundle)
        check_files(self.bundle, self.manifest)
        self.backend = choose_backend(self.bundle, self.manifest, backend)
        self.threads = threads or physical_cores()
        self.backend_source = "asked for" if backend != "auto" else "the only backend that can run the bundle here"
        if backend == "auto" and precision == "auto" and long_side is None and self.backend == "onnxruntime" \
                and "litert" in self.manifest["graphs"] and interpreter_package():
            self.backend, precision, self.backend_source = self._auto_backend()
        tok = self.manifest["tokenizer"]
        self.max_tokens = int(tok["max_tokens"])
        self._tokenizer = Tokenizer.from_file(str(self.bundle / tok["file"]))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        pre = self.manifest["preprocessing"]
        self.long_side, self.divisor = int(pre["long_side"]), int(pre["size_divisor"])
        self.stride = int(self.manifest["output"]["stride"])
        self._cache: OrderedDict[str, dict] = OrderedDict()
        images, open_graph = self._init_litert(long_side) if self.backend == "litert" else self._init_onnx(long_side)
        if precision != "auto" and precision not in images:
            kind = ".tflite image graph" if self.backend == "litert" else "image graph"
            raise BundleError(f"{self.bundle}: no {precision} {kind} (has {', '.join(sorted(images))})")
        # All image graphs take the same inputs (the manifest check makes sure).
        self._image_inputs = next(iter(images.values()))["inputs"]
        if precision == "auto":
            precision, self.precision_source, self._image = self._auto_precision(images, open_graph)
        else:
            self.precision_source = "asked for"
            self._image = open_graph(precision)
        self.precision = precision
        self.threshold = float(self.manifest["output"]["threshold"])
        # "Is it there?" has its own threshold on the peak probability where the bundle records one
        # calibrated on val with absent-target phrases (python -m convert.found); else the mask's.
        self.found_threshold = float(self.manifest["output"].get("found_threshold", self.threshold))
        self._threshold_logit = float(np.log(self.threshold / (1.0 - self.threshold)))
        # With regions="best": where the bundle has one, a small crop classifier weighs each
        # candidate region by how likely it is of the category the phrase names
        # (pi_runtime.categories; README, "Session 16: the category check").
        self.category_check = self._init_category_check() if category_check and regions == "best" else None

    def _init_category_check(self) -> CategoryCheck | None:
        spec = self.manifest.get("category_check")
        if spec is None:
            return None
        if not onnxruntime_importable():  # a LiteRT-only install: the masks come without the check
            warnings.warn("the bundle's category check needs onnxruntime (pip install onnxruntime); running without it",
                          stacklevel=3)
            return None
        session = self._session(spec["file"], self._session_options())
        pick_power = spec.get("pick_power")
        return CategoryCheck(session, list(spec["classes"]), {k: list(v) for k, v in spec["nouns"].items()},
                             float(spec["share"]), float(spec["power"]), float(spec["found_min"]),
                             None if pick_power is None else float(pick_power))

    def _init_onnx(self, long_side: int | None):
        """Opens the ONNX text graph; returns the image graphs and how to open one."""
        import onnxruntime as ort

        # The text graph runs once per new phrase, so it is left unoptimised: constant folding
        # would turn its fp16-stored weights into a second, fp32 copy (~45 MB more resident).
        text_options = self._session_options()
        text_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        text_spec = self.manifest["graphs"]["text"]
        self._text = self._session(text_spec["file"], text_options)
        check_graph_io(self._text, self.bundle / text_spec["file"], text_spec, "text")
        self._text_outputs = text_spec["outputs"]
        self.input_hw = None  # any multiple of the divisor
        if long_side is not None:  # the graphs take any multiple of the divisor; smaller is faster, less exact
            if long_side < 2 * self.divisor or long_side % self.divisor:
                raise ValueError(f"long side {long_side}: must be a multiple of {self.divisor}, at least "
                                 f"{2 * self.divisor}")
            self.long_side = int(long_side)
        return self.manifest["graphs"]["image"], self._image_session

    def _init_litert(self, long_side: int | None):
        """Opens the .tflite text graph; returns the image graphs and how to open one."""
        from pi_runtime.litert import LiteRTGraph

        lite = self.manifest["graphs"]["litert"]
        images = lite["image"]
        self.input_hw = tuple(int(x) for x in lite["input_hw"])
        if long_side is not None and long_side != max(self.input_hw):
            raise ValueError(f"long side {long_side}: the bundle's .tflite graphs are static, "
                             f"{self.input_hw[0]}x{self.input_hw[1]}; use --backend onnxruntime to choose a size")
        self.long_side = max(self.input_hw)
        text_spec = lite["text"]
        self._text = LiteRTGraph(self.bundle / text_spec["file"], text_spec, self.threads, "text")
        self._text_outputs = text_spec["outputs"]
        return images, lambda p: LiteRTGraph(self.bundle / images[p]["file"], images[p], self.threads, f"{p} image")

    def _image_session(self, precision: str):
        spec = self.manifest["graphs"]["image"][precision]
        options = session_options(self.threads, image_graph=True)
        session = self._session(spec["file"], options)
        check_graph_io(session, self.bundle / spec["file"], spec, f"{precision} image")
        return session

    def _auto_backend(self) -> tuple[str, str, str]:
        """Both backends can run this bundle: time each one's own ``auto`` choice on the same 4:3
        frame, alternately, once per (bundle, CPU, threads), and keep the faster (cached like
        the precision; see :mod:`pi_runtime.precision`)."""
        from pi_runtime import precision as prec

        key = prec.cache_key(self.bundle, self.threads) + "|backend"
        entry = prec.cached_choice(key)
        if entry is not None and entry.get("backend") in ("onnxruntime", "litert"):
            return entry["backend"], entry["precision"], f"measured earlier on this machine ({entry['ms']})"
        segs = {b: Segmenter(self.bundle, "auto", self.threads, None, b) for b in ("onnxruntime", "litert")}
        side = int(self.manifest["preprocessing"]["long_side"])
        frame = np.zeros((3 * side // 4, side, 3), np.uint8)
        runs = {}
        for b, seg in segs.items():
            feeds = {"image": seg.canvas(frame)[0][None], **seg.encode("the red mug")}
            runs[f"{b} {seg.precision}"] = (lambda s=seg, f=feeds: s._image.run(None, f))
        ms = prec.time_alternately(runs)
        best = min(ms, key=ms.get)
        chosen, chosen_precision = best.split()
        cached = prec.remember(key, {"backend": chosen, "precision": chosen_precision, "ms": ms})
        return chosen, chosen_precision, \
            f"measured now ({ms}){'' if cached else '; not cached: cache directory not writable'}"

    def _auto_precision(self, images: dict, open_graph):
        """``(precision, how it was chosen, its session)``: see :mod:`pi_runtime.precision`."""
        from pi_runtime import precision as prec

        if len(images) == 1:
            only = next(iter(images))
            return only, "the only image graph in the bundle", open_graph(only)
        key = prec.cache_key(self.bundle, self.threads) + ("|litert" if self.backend == "litert" else "")
        entry = prec.cached_choice(key)
        if entry is not None and entry["precision"] in images:
            return entry["precision"], f"measured earlier on this machine ({entry['ms']})", \
                open_graph(entry["precision"])
        try:
            sessions = {p: open_graph(p) for p in images}
            ms = prec.measure(sessions, self.encode("the red mug"), self.long_side, self.divisor, self.input_hw)
        except BundleError:
            raise
        except Exception as exc:  # noqa: BLE001 - timing failed: the CPU flags decide
            chosen = "int8" if prec.cpu_has_int8_dot() and "int8" in images else \
                ("fp32" if "fp32" in images else sorted(images)[0])
            return chosen, f"CPU flags (timing failed: {exc})", open_graph(chosen)
        chosen = min(ms, key=ms.get)
        cached = prec.remember(key, {"precision": chosen, "ms": ms, "long_side": self.long_side})
        how = f"measured now ({ms}){'' if cached else '; not cached: cache directory not writable'}"
        return chosen, how, sessions[chosen]

    def _session(self, name: str, options):
        import onnxruntime as ort

        path = self.bundle / name
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for bad files
            raise BundleError(f"{path}: onnxruntime cannot load it ({exc})") from exc

    def _session_options(self):
        return session_options(self.threads)

    @classmethod
    def from_bundle(cls, path: str | Path | None = None, precision: str = "auto", threads: int | None = None,
                    long_side: int | None = None, backend: str = "auto", regions: str = "best",
                    flip_average: bool = False, where_words: bool = True, category_check: bool = True,
                    plain_pass: bool = True, grow: bool = True, generic_pass: bool = True, refine: bool = True):
        """``path=None`` loads the bundle shipped inside the package; ``long_side`` overrides the
        bundle's input size (e.g. 320 on a Pi 4: about 4x faster, less exact; ONNX graphs only);
        ``backend``: ``auto``, ``onnxruntime`` or ``litert`` (:func:`choose_backend`); ``regions``:
        ``best`` keeps the one region the model is surest of, ``all`` every pixel over the threshold;
        ``flip_average``: also run the mirrored image with the mirrored phrase and average the logits;
        ``where_words``: with ``best``, a where-word of the phrase ("leftmost", "second from the
        right", :mod:`pi_runtime.spatial`) or a relation to another object ("left of the duck",
        :mod:`pi_runtime.relations`) chooses among the candidate regions; ``category_check``: with
        ``best``, the bundle's crop classifier (where it has one) weighs the candidates by the
        category the phrase names (:mod:`pi_runtime.categories`); ``plain_pass``: with ``best`` and
        ``where_words``, a phrase with where-, depth- or size-words or a relation is also run as
        its plain description and the larger logit kept (:mod:`pi_runtime.plain`); ``generic_pass``:
        with the category check, a phrase naming a category is run as its generic description
        ("the white thing") instead of the plain one (:func:`pi_runtime.plain.generic_description`); ``grow``: with
        ``best``, the kept region takes in the cells joined to it over the threshold less
        :data:`pi_runtime.regions.GROW_MARGIN` (:func:`pi_runtime.regions.grow_region`); ``refine``:
        the logits follow the frame's colour edges before the regions are cut, and the mask's
        outline is moved to them (:mod:`pi_runtime.refine`)."""
        if path is None:
            path = default_bundle_dir()
            if not (path / "manifest.json").is_file():
                raise BundleError(f"{path}: this install has no bundled default model; pass a bundle directory")
        return cls(Path(path), precision, threads, long_side, backend, regions, flip_average, where_words,
                   category_check, plain_pass, grow, generic_pass, refine)

    def tokenize(self, phrase: str) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, attention_mask)`` int64 ``[1, L]`` (``L = max_tokens`` for the static LiteRT
        graphs); long phrases are cut with a warning."""
        ids = self._tokenizer.encode(check_phrase(phrase)).ids
        if len(ids) > self.max_tokens:
            warnings.warn(f"phrase has {len(ids)} tokens; keeping the first {self.max_tokens}", stacklevel=3)
            ids = ids[:self.max_tokens - 1] + ids[-1:]  # keep [SEP]
        ids = np.array([ids], np.int64)
        mask = np.ones_like(ids)
        if self.backend == "litert":  # static graphs: right-pad to max_tokens (padded tokens are masked)
            pad = ((0, 0), (0, self.max_tokens - ids.shape[1]))
            ids, mask = np.pad(ids, pad), np.pad(mask, pad)
        return ids, mask

    def encode(self, phrase: str) -> dict:
        """The phrase's tensors (image-graph inputs), from the cache when seen recently."""
        key = check_phrase(phrase)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        ids, mask = self.tokenize(phrase)
        outputs = self._text.run(self._text_outputs, {"input_ids": ids, "attention_mask": mask})
        feeds = phrase_feeds(self._image_inputs, phrase_tensors(mask, self._text_outputs, outputs))
        self._cache[key] = feeds
        if len(self._cache) > TEXT_CACHE_SIZE:
            self._cache.popitem(last=False)
        return feeds

    def canvas(self, image: np.ndarray):
        """``(model input HxWx3 uint8, Letterbox)``: resized to the long side and padded to the
        divisor, or letterboxed into the static ``input_hw`` of .tflite graphs."""
        if self.input_hw is None:
            return letterbox(image, self.long_side, self.divisor)
        return letterbox_into(image, self.input_hw)

    def _raw_logits(self, image: np.ndarray, phrase: str):
        """``(stride-grid logits cropped to the image, Letterbox, timings)``."""
        t0 = time.perf_counter()
        text = self.encode(phrase)
        t1 = time.perf_counter()
        padded, box = self.canvas(image)
        logits = self._image.run(None, {"image": padded[None], **text})[0][0, 0]
        if self.flip_average:
            # The whole canvas is mirrored (padding and all), so the mirrored logit grid lines up
            # with the first cell for cell, whatever the image's width.
            mirrored = self._image.run(None, {"image": np.ascontiguousarray(padded[:, ::-1])[None],
                                              **self.encode(mirror_phrase(phrase))})[0][0, 0]
            logits = 0.5 * (logits + mirrored[:, ::-1])
        t2 = time.perf_counter()
        rh, rw = box.resized_hw
        cells = logits[: -(-rh // self.stride), : -(-rw // self.stride)]  # the padding holds no object
        return cells, box, {"text": (t1 - t0) * 1e3, "image": (t2 - t1) * 1e3}

    def _to_image(self, grid: np.ndarray, box) -> np.ndarray:
        """A stride-grid map resized to the original image: the resized image covers the grid's
        [0, rw/stride) x [0, rh/stride), mapped straight to the original size (pixel-centre
        bilinear, as the training side's interpolate)."""
        rh, rw = box.resized_hw
        out = Image.fromarray(np.ascontiguousarray(grid, np.float32), mode="F")
        out = out.resize((box.orig_hw[1], box.orig_hw[0]), Image.BILINEAR, box=(0, 0, rw / self.stride, rh / self.stride))
        return np.asarray(out, np.float32)

    def _keep_only(self, mask: np.ndarray, keep: np.ndarray, box) -> None:
        """Clears, in place, the pixels of ``mask`` that no cell of ``keep`` (a stride-grid bool
        map) reaches through the bilinear upsampling. Exact because any two over-threshold cells
        in one pixel's 2x2 support are 8-neighbours, so a mask pixel's support never mixes a kept
        region with another; only a grown region whose rim was shared out with a neighbour
        (:func:`pi_runtime.regions.grow_region`) keeps the pixels on the seam. Upsamples only the
        window the kept cells can reach (1-2 ms saved on a 640x480 frame against resizing the
        whole grid)."""
        rows, cols = np.nonzero(keep.any(axis=1))[0], np.nonzero(keep.any(axis=0))[0]
        if len(rows) == 0:
            mask[:] = False
            return
        (rh, rw), (h, w) = box.resized_hw, box.orig_hw
        sy, sx = rh / self.stride / h, rw / self.stride / w  # grid cells per image pixel

        def span(first: int, last: int, scale: float, n: int) -> tuple[int, int]:
            # Pixel i samples the grid at (i + 0.5) * scale - 0.5, between two cells: it can see
            # cells first..last only while that lies in (first - 1, last + 1).
            return (max(0, int(np.floor((first - 0.5) / scale - 0.5))),
                    min(n, int(np.ceil((last + 1.5) / scale - 0.5)) + 1))

        (y0, y1), (x0, x1) = span(rows[0], rows[-1], sy, h), span(cols[0], cols[-1], sx, w)
        window = Image.fromarray(keep.astype(np.float32), mode="F").resize(
            (x1 - x0, y1 - y0), Image.BILINEAR, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
        mask[:y0], mask[y1:], mask[:, :x0], mask[:, x1:] = False, False, False, False
        mask[y0:y1, x0:x1] &= np.asarray(window) > 0

    def logits(self, image: np.ndarray, phrase: str) -> tuple[np.ndarray, dict]:
        """Mask logits at the image's own resolution and timings (ms)."""
        cells, box, timings = self._raw_logits(image, phrase)
        t0 = time.perf_counter()
        out = self._to_image(cells, box)
        timings["post"] = (time.perf_counter() - t0) * 1e3
        return out, timings

    def _run_once(self, image: np.ndarray, phrase: str, runs: dict | None):
        """:meth:`_raw_logits`, remembered in ``runs`` (phrase -> cells, and the frame's
        :class:`pi_runtime.refine.CellGuide` under a tuple key) for one frame: a phrase
        the frame already ran (a relation's target and reference can share a generic
        description, "the thing") costs nothing the second time."""
        if runs is not None and phrase in runs:
            cells, box = runs[phrase]
            return cells, box, {"text": 0.0, "image": 0.0}
        cells, box, timings = self._raw_logits(image, phrase)
        if runs is not None:
            runs[phrase] = cells, box
        return cells, box, timings

    def _with_second(self, image: np.ndarray, phrase: str, second: str | None, runs: dict | None):
        """:meth:`_raw_logits` of ``phrase``, cell by cell the larger of them and those of
        ``second`` where there is one: the objects the phrase itself missed become candidates."""
        cells, box, timings = self._run_once(image, phrase, runs)
        if second is not None:
            second_cells, _, second_timings = self._run_once(image, second, runs)
            cells = np.maximum(cells, second_cells)
            for key, ms in second_timings.items():
                timings[key] += ms
        if self.refine:  # the logits follow the frame's colour edges (pi_runtime.refine.guide_cells)
            t0 = time.perf_counter()
            (rh, rw), s = box.resized_hw, self.stride
            covered = (-(-rh // s), -(-rw // s))
            guide = runs.get(("guide", covered)) if runs is not None else None
            if guide is None:  # once a frame: a relation's reference is guided by the same frame
                guide = cell_guide(image, covered)
                if runs is not None:
                    runs[("guide", covered)] = guide
            cells = guide_cells(guide, cells)
            timings["post"] = (time.perf_counter() - t0) * 1e3
        return cells, box, timings

    def _phrase_cells(self, image: np.ndarray, phrase: str, runs: dict | None = None):
        """The logits the phrase's regions are chosen from: its own, cell by cell the larger of
        them and those of the one more description the runtime runs for it
        (:meth:`second_phrase`). ``runs``: this frame's runs so far (:meth:`_run_once`)."""
        return self._with_second(image, phrase, self.second_phrase(phrase), runs)

    def _frame_logits(self, image: np.ndarray, phrase: str, track: RegionTrack | None = None):
        """What the region rules of one frame start from: ``(cells, box, timings, ref_cells,
        reference)``, the phrase's stride-grid logits (:meth:`_phrase_cells`) and, for a relation
        phrase, the reference's logits and its region (:meth:`_reference_cells`,
        :meth:`_reference_region`; both None without a relation). The category check's training
        cuts its crops from the same (``eris.category_check``)."""
        runs = {}
        cells, box, timings = self._phrase_cells(image, phrase, runs)
        relation, ref_cells, ref_timings = self._reference_cells(image, phrase, runs)
        for key, ms in ref_timings.items():
            timings[key] = timings.get(key, 0.0) + ms
        reference = self._reference_region(relation, ref_cells, track, image, box)
        return cells, box, timings, ref_cells, reference

    def _result(self, image: np.ndarray, phrase: str, track: RegionTrack | None = None) -> Result:
        cells, box, timings, _, reference = self._frame_logits(image, phrase, track)
        return self._result_from_cells(cells, box, timings, phrase, track, reference, image)

    def plain_phrase(self, phrase: str) -> str | None:
        """The plain description the runtime also runs for ``phrase`` (``plain_pass``, with
        regions ``best`` and ``where_words``; :func:`pi_runtime.plain.plain_description`), or None."""
        if not (self.plain_pass and self.where_words and self.regions == "best"):
            return None
        return plain_description(phrase)

    def generic_phrase(self, phrase: str) -> str | None:
        """The generic description the runtime also runs for ``phrase`` (``generic_pass``, with
        the category check; :func:`pi_runtime.plain.generic_description`), or None."""
        if not self.generic_pass or self.category_check is None:
            return None
        return generic_description(phrase, self.category_check.nouns)

    def second_phrase(self, phrase: str) -> str | None:
        """What the runtime runs beside ``phrase``: its generic description where it has one, else
        its plain description, else nothing (None)."""
        return self.generic_phrase(phrase) or self.plain_phrase(phrase)

    def _reference_cells(self, image: np.ndarray, phrase: str, runs: dict | None = None):
        """For a relation phrase ("the mug left of the duck"; with ``where_words`` and regions
        ``best``): ``(relation, the reference object's stride-grid logits, timings)``, from one
        more run of the graphs on the reference alone ("the duck"), cell by cell the larger of
        them and its generic description's ("the thing") where the runtime runs one; else
        ``(None, None, {})``."""
        relation = parse_relation(phrase) if self.where_words and self.regions == "best" else None
        if relation is None:
            return None, None, {}
        cells, _, timings = self._with_second(image, relation.reference, self.generic_phrase(relation.reference), runs)
        return relation, cells, timings

    def _reference_region(self, relation, cells: np.ndarray | None, track: RegionTrack | None = None,
                          image: np.ndarray | None = None, box=None) -> np.ndarray | None:
        """The reference object's region in ``cells`` (:meth:`_reference_cells`), or None without
        a relation. With a ``track``, it stays on the last frame's object as the target does; with
        the ``image`` (and its ``box``), the category check weighs its candidates."""
        if relation is None:
            return None
        weigh = self._weigh(image, box, cells, relation.reference)
        if track is not None:
            return track.reference.choose(cells, self._threshold_logit, relation.reference, weigh=weigh)
        return best_region(cells, self._threshold_logit, weigh=weigh)

    def _weigh(self, image: np.ndarray | None, box, cells: np.ndarray, text: str, picking: bool = False):
        """The category check for regions of ``cells`` named by ``text`` (``best_region``'s
        ``weigh``, which also remembers each region's p for the found decision), or None.
        ``picking``: a where-word or relation chooses among the weighed candidates."""
        check = self.category_check
        if check is None or image is None:
            return None
        noun = phrase_category(text, check.nouns)
        if noun is None:
            return None
        return _Weighing(check, image, noun, self.cell_hw(box), picking)

    def cell_hw(self, box) -> tuple[float, float]:
        """One stride-grid cell's height and width in the original image's pixels."""
        (rh, rw), (h, w) = box.resized_hw, box.orig_hw
        return self.stride * h / rh, self.stride * w / rw

    def _pick(self, phrase: str, reference: np.ndarray | None):
        """What the phrase says about which region to keep (``best_region``'s ``pick``), or None:
        a relation to the ``reference`` region, else a where-word."""
        if not self.where_words:
            return None
        relation = parse_relation(phrase) if reference is not None else None
        if relation is not None:
            return partial(choose_related, relation=relation.relation, reference=reference)
        selector = parse_selector(phrase)
        return selector.pick if selector is not None else None

    def _result_from_cells(self, cells: np.ndarray, box, timings: dict, phrase: str,
                           track: RegionTrack | None = None, reference: np.ndarray | None = None,
                           image: np.ndarray | None = None) -> Result:
        """The :class:`Result` of stride-grid logits (:meth:`_raw_logits`): an evaluation can
        compute a frame's logits once and apply several region rules to them. ``reference``: for a
        relation phrase, the reference object's region on the same grid (:meth:`_result`), whose
        cells the target's candidates lose (:func:`pi_runtime.relations.without_reference`);
        ``image``: the frame, for the category check and the outline's refinement (neither
        without it)."""
        t0 = time.perf_counter()
        cells = without_reference(cells, reference)
        logits = self._to_image(cells, box)
        prob = 1.0 / (1.0 + np.exp(-np.clip(logits, -60.0, 60.0)))  # no overflow warning on confident pixels
        mask = prob >= self.threshold
        score = float(prob.max()) if prob.size else 0.0
        found = score >= self.found_threshold
        if not found:  # a phrase judged absent gets no mask, whatever a few pixels say
            mask = np.zeros_like(mask)
            if track is not None:
                track.forget()
        elif self.regions == "best":  # one phrase, one object: the one the phrase's geometry or the model picks
            pick = self._pick(phrase, reference)
            relation = parse_relation(phrase) if reference is not None else None
            weigh = self._weigh(image, box, cells, relation.target if relation is not None else phrase,
                                picking=pick is not None)
            keep = (track.choose(cells, self._threshold_logit, phrase, pick, weigh) if track is not None
                    else best_region(cells, self._threshold_logit, pick=pick, weigh=weigh))
            if weigh is not None and weigh.chosen_p(keep) < self.category_check.found_min:
                found = False  # the best candidate is unlikely to be what the phrase names
                keep = np.zeros_like(keep)
                if track is not None:
                    track.forget()
            grown = grow_region(cells, keep, self._threshold_logit, self.grow_margin) if self.grow_margin else None
            if grown is not None:  # the object's less sure cells too (pi_runtime.regions.GROW_MARGIN)
                keep, mask = grown, logits >= self._threshold_logit - self.grow_margin
            self._keep_only(mask, keep, box)
        if self.refine and image is not None:
            mask = refine_mask(image, mask, max(self.cell_hw(box)))
        bbox = centroid = None
        if mask.any():
            ys, xs = np.nonzero(mask)
            bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            centroid = (float(xs.mean()), float(ys.mean()))
        timings["post"] = timings.get("post", 0.0) + (time.perf_counter() - t0) * 1e3  # + guide_cells's
        return Result(phrase, prob, mask, score, found, bbox, centroid, float(mask.mean()), timings)

    def segment(self, image, phrase, track: RegionTrack | None = None):
        """``image``: a path, a PIL image or an ``H x W x 3`` uint8 RGB array. ``phrase``: a string
        (returns one :class:`Result`) or a list of strings (returns a list). ``track``: live mode's
        memory of the last frame's region (:class:`pi_runtime.regions.RegionTrack`; one phrase
        only), so the mask stays on one object while another scores about the same."""
        phrases = [check_phrase(p) for p in phrase] if isinstance(phrase, (list, tuple)) else check_phrase(phrase)
        array = load_image(image) if isinstance(image, (str, Path)) else to_rgb_array(image)
        if isinstance(phrases, list):
            if track is not None:
                raise ValueError("a region track follows one phrase; segment a list of phrases without one")
            return [self._result(array, p) for p in phrases]
        return self._result(array, phrases, track)
