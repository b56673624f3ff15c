"""eris.data.refcoco on a tiny dataset written in exactly the refer layout."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from eris.data import refcoco as rc
from eris.data.refcoco import RefCoco, decode_segmentation


def _rle_uncompressed(mask):
    flat = mask.T.reshape(-1)  # column-major
    counts, value, run = [], False, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _rle_compressed_string(counts):
    """maskApi.c rleToString, to exercise the string decoder."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


@pytest.fixture
def root(tmp_path):
    img_dir = tmp_path / "images" / "mscoco" / "images" / "train2014"
    img_dir.mkdir(parents=True)
    for i, (w, h) in enumerate([(40, 30), (32, 32)], start=1):
        Image.fromarray(np.full((h, w, 3), 50 * i, np.uint8)).save(img_dir / f"COCO_train2014_{i:012d}.jpg")
    blob = np.zeros((32, 32), bool)
    blob[4:9, 10:20] = True
    blob[20:30, 3:6] = True
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 30, "width": 40},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": 32, "width": 32}],
        "annotations": [
            # two overlapping polygons of one object: the overlap must be 1, not 2
            {"id": 10, "image_id": 1, "segmentation": [[2, 2, 20, 2, 20, 12, 2, 12], [10, 6, 30, 6, 30, 20, 10, 20]],
             "bbox": [2, 2, 28, 18], "category_id": 1, "iscrowd": 0, "area": 0},
            {"id": 11, "image_id": 2, "segmentation": _rle_uncompressed(blob), "bbox": [0, 0, 1, 1],
             "category_id": 1, "iscrowd": 1, "area": 0},
            {"id": 12, "image_id": 2, "segmentation": {"size": [32, 32], "counts": _rle_compressed_string(
                _rle_uncompressed(blob)["counts"])}, "bbox": [0, 0, 1, 1], "category_id": 1, "iscrowd": 1, "area": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    refs = [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "train", "category_id": 1, "sent_ids": [0, 1],
         "file_name": "COCO_train2014_000000000001_10.jpg",
         "sentences": [{"sent": "left box", "raw": "Left box.", "tokens": ["left", "box"], "sent_id": 0},
                       {"sent": "the grey thing", "raw": "the grey thing", "tokens": [], "sent_id": 1}]},
        {"ref_id": 1, "ann_id": 11, "image_id": 2, "split": "val", "category_id": 1, "sent_ids": [2],
         "file_name": "x.jpg", "sentences": [{"sent": "blob", "raw": "blob", "tokens": ["blob"], "sent_id": 2}]},
        {"ref_id": 2, "ann_id": 12, "image_id": 2, "split": "testA", "category_id": 1, "sent_ids": [3],
         "file_name": "x.jpg", "sentences": [{"sent": "blob again", "raw": "", "tokens": [], "sent_id": 3}]},
    ]
    (tmp_path / "refcoco").mkdir()
    with open(tmp_path / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    (tmp_path / "refcoco" / "instances.json").write_text(json.dumps(instances))
    return tmp_path, blob


def test_splits_sentences_and_polygon_masks(root):
    path, _ = root
    train = RefCoco(path, "refcoco", "unc", "train")
    assert len(train) == 2
    s0, s1 = train.sample(0), train.sample(1)
    assert (s0.phrase, s1.phrase) == ("left box", "the grey thing")
    assert s0.image.shape == (30, 40, 3) and s0.mask.shape == (30, 40)
    assert s0.mask.dtype == bool and s0.mask[8, 15] and not s0.mask[25, 35]
    assert s0.mask.sum() == decode_segmentation([[2, 2, 20, 2, 20, 12, 2, 12]], 30, 40).sum() + \
        decode_segmentation([[10, 6, 30, 6, 30, 20, 10, 20]], 30, 40).sum() - \
        (decode_segmentation([[2, 2, 20, 2, 20, 12, 2, 12]], 30, 40) &
         decode_segmentation([[10, 6, 30, 6, 30, 20, 10, 20]], 30, 40)).sum()
    assert s0.id == "0-0"


def test_rle_masks_uncompressed_and_compressed(root, monkeypatch):
    path, blob = root
    assert np.array_equal(RefCoco(path, "refcoco", "unc", "val").sample(0).mask, blob)
    assert np.array_equal(RefCoco(path, "refcoco", "unc", "testA").sample(0).mask, blob)
    assert len(RefCoco(path, "refcoco", "unc", "testB")) == 0


def test_fallback_rasteriser_without_pycocotools(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pycocotools(name, *a, **k):
        if name.startswith("pycocotools"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pycocotools)
    square = decode_segmentation([[1, 1, 5, 1, 5, 5, 1, 5]], 8, 8)
    assert square[2:5, 2:5].all() and not square[6:, 6:].any()


def test_missing_and_malformed_files_are_named(root):
    path, _ = root
    with pytest.raises(FileNotFoundError, match=r"refs\(umd\).p"):
        RefCoco(path, "refcoco", "umd", "val")
    (path / "refcoco" / "instances.json").write_text("{not json")
    with pytest.raises(ValueError, match="instances.json"):
        RefCoco(path, "refcoco", "unc", "val")
    with pytest.raises(ValueError, match="testA"):
        RefCoco(path, "refcocog", "umd", "testA")


def test_missing_image_is_named(root):
    path, _ = root
    (path / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000000002.jpg").unlink()
    with pytest.raises(ValueError, match="COCO_train2014_000000000002.jpg"):
        RefCoco(path, "refcoco", "unc", "val").sample(0)


def test_string_rle_decoder_round_trips():
    counts = [3, 5, 0, 12, 7, 100, 1]
    assert rc._rle_counts_from_string(_rle_compressed_string(counts)) == counts
