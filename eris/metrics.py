"""Referring-segmentation metrics: mIoU, oIoU and precision at IoU thresholds.

mIoU is the mean of per-sample IoU; oIoU is cumulative intersection over cumulative union;
P@t is the share of samples with IoU >= t. A sample whose prediction and ground truth are both
empty has IoU 1 (they agree).
"""

from __future__ import annotations

import numpy as np

__all__ = ["intersection_union", "summarize", "summarize_by_kind", "found_rates", "THRESHOLDS"]

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != ground truth shape {gt.shape}")
    pred, gt = pred.astype(bool), gt.astype(bool)
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def summarize(pairs: list[tuple[int, int]]) -> dict:
    """Metrics in percent from per-sample ``(intersection, union)``."""
    if not pairs:
        raise ValueError("no samples to summarize")
    inter = np.array([p[0] for p in pairs], np.float64)
    union = np.array([p[1] for p in pairs], np.float64)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    out = {"n": len(pairs), "mIoU": 100 * float(iou.mean()),
           "oIoU": 100 * float(inter.sum() / union.sum()) if union.sum() > 0 else 100.0}
    for t in THRESHOLDS:
        out[f"P@{t}"] = 100 * float((iou >= t).mean())
    return out


def summarize_by_kind(pairs: list[tuple[int, int]], kinds: list[str | None]) -> dict:
    """:func:`summarize` per phrase kind (samples without a kind are left out of the breakdown).

    Each kind's ``n`` adds up to the overall count when every sample has a kind, and the overall
    mIoU is the ``n``-weighted mean of the kinds' mIoU.
    """
    if len(pairs) != len(kinds):
        raise ValueError(f"{len(pairs)} samples but {len(kinds)} kinds")
    groups: dict[str, list[tuple[int, int]]] = {}
    for pair, kind in zip(pairs, kinds):
        if kind is not None:
            groups.setdefault(kind, []).append(pair)
    return {k: summarize(v) for k, v in sorted(groups.items())}


def found_rates(found: list[bool], present: list[bool]) -> dict:
    """How "is it there?" is answered: the share of present targets answered found and of absent
    targets answered not found, in percent (None where the set is empty)."""
    f, p = np.asarray(found, bool), np.asarray(present, bool)
    return {"present_found": 100 * float(f[p].mean()) if p.any() else None,
            "absent_rejected": 100 * float((~f[~p]).mean()) if (~p).any() else None,
            "n_present": int(p.sum()), "n_absent": int((~p).sum())}
