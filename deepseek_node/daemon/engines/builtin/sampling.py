"""Per-row sampling for a batch of sequences that each asked for their own temperature, top_p and seed.

Randomness is counter-based: the noise for a sequence's k-th token is a hash of (its seed, k, token id),
so a seeded request gives the same tokens whichever other requests share its batch and in whatever order
they joined, and the same in both engine backends. The whole thing is tensor ops (no per-row Python loop,
no generator objects), so it also runs inside transformers' continuous-batching step, where CUDA graphs
may capture it.

Sampling is Gumbel-max: argmax(log_softmax(logits / T) + Gumbel noise) draws from softmax(logits / T)
exactly; rows with temperature 0 take the plain argmax.
"""

from __future__ import annotations

import torch

__all__ = ["GREEDY", "apply_top_p", "choose", "sample", "step_seed"]

# The seed-step value that means "greedy" (temperature 0); real step seeds are 31-bit non-negative ints.
GREEDY = -1
_MASK32 = 0xFFFFFFFF
_MULT = 0x45D9F3B  # < 2**31, so (32-bit value) * _MULT stays inside int64 without overflow


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A well-mixed 32-bit integer hash (int64 tensor in, values in [0, 2**32) out)."""
    x = x & _MASK32
    x = (((x >> 16) ^ x) * _MULT) & _MASK32
    x = (((x >> 16) ^ x) * _MULT) & _MASK32
    return (x >> 16) ^ x


def _mix32_int(x: int) -> int:
    """`_mix32` on a Python int: the host side computes one value per token, a tensor would cost more."""
    x &= _MASK32
    x = (((x >> 16) ^ x) * _MULT) & _MASK32
    x = (((x >> 16) ^ x) * _MULT) & _MASK32
    return (x >> 16) ^ x


def step_seed(seed: int, index: int) -> int:
    """The 31-bit seed for token number `index` of a sequence seeded with `seed` (any Python int)."""
    folded = (seed & _MASK32) ^ ((seed >> 32) & _MASK32) ^ ((seed >> 64) & _MASK32)
    x = _mix32_int(folded ^ 0x9E3779B)
    x = _mix32_int(x + index * 0x2545F49)
    return x & 0x7FFFFFFF


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask (to -inf) the tokens outside each row's nucleus; top_p >= 1 keeps every token."""
    sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
    probs = sorted_logits.softmax(dim=-1)
    # A token is dropped when the probability mass strictly before it already reaches top_p.
    mass_before = probs.cumsum(dim=-1) - probs
    drop_sorted = mass_before >= top_p.unsqueeze(-1)
    drop_sorted[..., 0] = False  # always keep the most likely token
    drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_idx, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose(scores: torch.Tensor, seed_steps: torch.Tensor) -> torch.Tensor:
    """Pick one token per row from already temperature-scaled, top_p-filtered scores [B, V].

    Rows whose seed step is GREEDY take the argmax; the others draw with Gumbel-max from the counter-based
    noise for (seed step, token id).
    """
    scores = scores.float()
    vocab = torch.arange(scores.shape[-1], device=scores.device, dtype=torch.int64)
    h = _mix32(seed_steps.clamp(min=0).unsqueeze(-1) * 0x27D4EB2 + vocab.unsqueeze(0))
    u = (h.double() + 0.5) / 4294967296.0  # uniform in (0, 1), never exactly 0 or 1
    gumbel = -torch.log(-torch.log(u))
    sampled = (torch.log_softmax(scores, dim=-1).double() + gumbel).argmax(dim=-1)
    return torch.where(seed_steps < 0, scores.argmax(dim=-1), sampled)


def sample(
    logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor | None, seed_steps: torch.Tensor
) -> torch.Tensor:
    """Next token per row.

    logits [B, V] (any float dtype); temperature [B] float; top_p [B] float, or None when no row filters;
    seed_steps [B] int64 (GREEDY = argmax, which callers use for temperature 0).
    """
    logits = logits.float()
    temp = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
    scores = logits / temp.unsqueeze(-1)
    if top_p is not None:
        scores = apply_top_p(scores, top_p)
    return choose(scores, seed_steps)
