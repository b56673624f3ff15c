"""Narrow a trained model's deformable convs to sample fewer channels (``deform_sample_channels``).

Why: in the INT8 image graph the deformable convs' sampling stays float (GridSample and the
modulation Mul, ~30 % of its time on a CPU), and the finest FPN level holds 16x the pixels of
the coarsest. A DCN whose nine per-tap weights ``W_k`` (C_out x C_in) share one input subspace,
``W_k = W'_k P`` with ``P`` r x C_in, samples ``P x`` (r channels) instead of ``x`` and computes the
same thing: sampling and modulation act on each channel alike, so they commute with ``P``.

A trained layer's ``W_k`` are not low-rank, but its inputs are not spread evenly over the C_in
directions either: the rank-r factorisation that loses the least *output* on the data minimises
``E || (A - W' P) x ||^2`` over the stacked ``A = [W_0; ...; W_8]``. With ``S = Sigma^(1/2)`` (Sigma the
uncentred input covariance), that is the truncated SVD of ``A S``: ``A S ~ U_r s_r V_r^T``, so
``W' = U_r s_r`` and ``P = V_r^T S^-1``, which also makes ``P x`` white (unit variance, uncorrelated),
a sensible scale for fine-tuning. The layer keeps its offset/modulation conv, which reads the
full input.
"""

from __future__ import annotations

import torch
from torch import Tensor

from eris.builder import build_model

__all__ = ["factor_taps", "input_covariances", "with_narrow_sampling"]


def factor_taps(weight: Tensor, covariance: Tensor, rank: int, eps: float = 1e-6) -> tuple[Tensor, Tensor, float]:
    """``(reduce [r, C_in, 1, 1], weight' [C_out, r, kh, kw], kept)`` for a DCN ``weight``
    ``[C_out, C_in, kh, kw]`` and its input's uncentred ``covariance`` [C_in, C_in]; ``kept`` is the
    share of the layer's output energy on that input distribution the factorisation keeps."""
    c_out, c_in, kh, kw = weight.shape
    if not 0 < rank <= c_in:
        raise ValueError(f"rank {rank} must be in 1..{c_in}")
    w = weight.detach().double()
    a = w.permute(2, 3, 0, 1).reshape(kh * kw * c_out, c_in)           # rows (tap, out)
    cov = covariance.detach().double()
    cov = (cov + cov.T) / 2 + eps * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(c_in, dtype=cov.dtype)
    lam, u = torch.linalg.eigh(cov)
    lam = lam.clamp_min(lam.max() * 1e-12)
    s = (u * lam.sqrt()) @ u.T
    s_inv = (u * lam.rsqrt()) @ u.T
    uu, sig, vh = torch.linalg.svd(a @ s, full_matrices=False)
    reduce = vh[:rank] @ s_inv                                          # [r, C_in]
    taps = uu[:, :rank] * sig[:rank]                                    # [(tap, out), r]
    narrowed = taps.reshape(kh, kw, c_out, rank).permute(2, 3, 0, 1)    # [C_out, r, kh, kw]
    kept = float(sig[:rank].square().sum() / sig.square().sum())
    dtype = weight.dtype
    return reduce.reshape(rank, c_in, 1, 1).to(dtype), narrowed.contiguous().to(dtype), kept


@torch.no_grad()
def input_covariances(model, layers: list[int], batches) -> dict[int, Tensor]:
    """Uncentred channel covariance of the input of ``model.fpn.blocks[i]``'s DCN, for each ``i`` in
    ``layers``, over ``batches`` (dicts with ``image``, ``input_ids``, ``attention_mask``), eval mode."""
    sums: dict[int, Tensor] = {}
    counts: dict[int, int] = {}
    hooks = []
    for i in layers:
        def hook(_module, args, i=i):
            x = args[0].detach().double()
            flat = x.transpose(0, 1).reshape(x.shape[1], -1)
            sums[i] = sums.get(i, 0) + flat @ flat.T
            counts[i] = counts.get(i, 0) + flat.shape[1]
        hooks.append(model.fpn.blocks[i][0].register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch["image"], batch["input_ids"], batch["attention_mask"])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if set(sums) != set(layers):
        raise ValueError("no batches to measure the deformable convs' inputs on")
    return {i: sums[i] / counts[i] for i in layers}


def with_narrow_sampling(model, channels: tuple[int, ...], batches) -> tuple[object, dict[int, float]]:
    """``model`` rebuilt with ``deform_sample_channels=channels`` (finest level first; 0 keeps a
    level as it is): every other weight copied, each narrowed DCN factored by :func:`factor_taps`
    on its inputs over ``batches``. Returns the new model and, per narrowed level, the share of
    output energy kept (1.0 when a level's rank is its full width: then the function is unchanged)."""
    current = tuple(model.config.deform_sample_channels)
    if any(current):
        raise ValueError(f"the model already samples narrowed channels {current}")
    dim = model.config.dim
    levels = [i for i, c in enumerate(channels) if c and c < dim]
    channels = tuple(c if c and c < dim else 0 for c in channels)
    covariances = input_covariances(model, levels, batches)
    narrowed = build_model(model.config.replace(deform_sample_channels=channels), pretrained=False)
    state = model.state_dict()
    kept = {}
    for i in levels:
        key = f"fpn.blocks.{i}.0.weight"
        reduce, weight, kept[i] = factor_taps(state[key], covariances[i], channels[i])
        state[key] = weight
        state[f"fpn.blocks.{i}.0.reduce.weight"] = reduce
    narrowed.load_state_dict(state, strict=True)
    narrowed.train(model.training)
    return narrowed, kept
