"""Weight quantization: the schemes, bit widths and granularities, and ``quantize_weight``.

Quantizers follow the affine formulas of torchao's ``quantize_affine``:

* ``symmetric``  – ``q = clamp(round(w / s), -qmax, qmax)``, ``s = absmax / qmax``,
  ``qmax = 2**(bits-1) - 1``; dequantized ``q * s``.
* ``asymmetric`` – ``q = clamp(round(w / s) + zp, 0, 2**bits - 1)`` with the range widened to
  include zero, ``s = (r_max - r_min) / (2**bits - 1)``, ``zp = round(-r_min / s)``;
  dequantized ``(q - zp) * s``.
* ``pow2``       – levels ``0, ±absmax * 2**-k`` for ``k = 0 .. 2**(bits-1) - 2``.
* ``kmeans``     – Deep Compression weight sharing: 1-D Lloyd's k-means, linear initialisation.

All of them map an exact zero to an exact zero, so pruned weights stay pruned. ``torch.round``
rounds half to even; ``pow2`` and ``kmeans`` break exact ties between two levels towards the level
of smaller magnitude (so ``q(-w) == -q(w)`` for ``pow2``).

The constants here are the one definition of what can be asked for: the plan checks recipes
against them (``compress_core.plan``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from compress_core.ops.checks import check_axis, check_tensor, is_int
from compress_core.ops.codebook import kmeans_codebook, nearest_level

ALLOWED_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8, 16)
SCHEMES: tuple[str, ...] = ("symmetric", "asymmetric", "pow2", "kmeans")
GRANULARITIES: tuple[str, ...] = ("channel", "tensor")
KMEANS_MAX_BITS: int = 8
"""``kmeans`` stops at 8 bits: a 65536-entry codebook is no longer weight sharing."""


def bits_for(scheme: str) -> tuple[int, ...]:
    """The bit widths ``scheme`` takes: every one of ``ALLOWED_BITS``, ``kmeans`` up to ``KMEANS_MAX_BITS``."""
    return tuple(bits for bits in ALLOWED_BITS if scheme != "kmeans" or bits <= KMEANS_MAX_BITS)


def _rows(weight: torch.Tensor, granularity: str, axis: int) -> torch.Tensor:
    """View ``weight`` as [groups, elements]: one row per channel along ``axis``, or one row."""
    if granularity == "tensor":
        return weight.reshape(1, -1)
    return weight.movedim(axis, 0).reshape(weight.shape[axis], -1)


def _unrows(rows: torch.Tensor, like: torch.Tensor, granularity: str, axis: int) -> torch.Tensor:
    """Inverse of :func:`_rows`."""
    if granularity == "tensor":
        return rows.reshape(like.shape)
    moved_shape = like.movedim(axis, 0).shape
    return rows.reshape(moved_shape).movedim(0, axis).contiguous()


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """The result of :func:`quantize_weight`.

    Attributes:
        values: dequantized weight, same shape and dtype as the input.
        bits, scheme, granularity, axis: the arguments used (``axis`` normalised to >= 0).
        scale: float32; shape ``[C]`` (one per channel along ``axis``) for ``"channel"``, a 0-d
            tensor for ``"tensor"``. ``symmetric``/``asymmetric``: the step size; ``pow2``: the
            absmax (largest level). ``None`` for ``kmeans``.
        zero_point: int32 tensor shaped like ``scale`` for ``asymmetric``, else ``None``.
        codebook: sorted levels. ``pow2``: the unit levels ``0, ±2**-k`` shared by every channel
            (multiply by ``scale`` to get real values), shape ``[2**bits - 1]``. ``kmeans``: the
            centroids, shape ``[2**bits]`` (``"tensor"``) or ``[C, 2**bits]`` (``"channel"``);
            may hold duplicates when there are fewer distinct weights than centroids. ``None``
            for the uniform schemes.
    """

    values: torch.Tensor
    bits: int
    scheme: str
    granularity: str
    axis: int
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    codebook: torch.Tensor | None

    @property
    def groups(self) -> int:
        """How many grids the weight has: one per channel along ``axis``, or one for the tensor."""
        return self.values.shape[self.axis] if self.granularity == "channel" else 1

    def requantize(self, weight: torch.Tensor) -> QuantizedWeight:
        """``weight`` quantized with these settings (bits, scheme, granularity, axis), its grids
        recomputed from it (fine-tuning moves the latent weight off the old ones)."""
        return quantize_weight(weight.detach(), self.bits, self.scheme, self.granularity, self.axis)

    def levels(self, channel: int | None = None) -> torch.Tensor:
        """Sorted, distinct representable values (float32) of the tensor or of one channel.

        ``channel`` is required for ``"channel"`` granularity; for ``"tensor"`` granularity it
        may be omitted (all channels share the same grid).
        """
        n_channels = self.values.shape[self.axis] if self.values.dim() > 0 else 1
        if channel is None:
            if self.granularity == "channel":
                raise ValueError(
                    f"levels() needs a channel index for per-channel quantization (allowed 0..{n_channels - 1})"
                )
            row = 0
        else:
            if not is_int(channel) or not 0 <= int(channel) < n_channels:
                raise ValueError(f"channel={channel!r} is out of range; allowed 0..{n_channels - 1}")
            row = int(channel) if self.granularity == "channel" else 0

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1)[row] if self.granularity == "channel" else t.reshape(())

        if self.scheme == "symmetric":
            assert self.scale is not None
            qmax = 2 ** (self.bits - 1) - 1
            q = torch.arange(-qmax, qmax + 1, dtype=torch.float32)
            return torch.unique(q * pick(self.scale))
        if self.scheme == "asymmetric":
            assert self.scale is not None and self.zero_point is not None
            q = torch.arange(0, 2**self.bits, dtype=torch.float32)
            return torch.unique((q - pick(self.zero_point).to(torch.float32)) * pick(self.scale))
        if self.scheme == "pow2":
            assert self.scale is not None and self.codebook is not None
            return torch.unique(self.codebook * pick(self.scale))
        assert self.codebook is not None
        book = self.codebook[row] if self.granularity == "channel" else self.codebook
        return torch.unique(book)


def _check_arguments(
    weight: torch.Tensor, bits: object, scheme: object, granularity: object, axis: object
) -> tuple[int, int]:
    """``(bits, axis)`` checked and normalised; ``ValueError`` for anything not allowed."""
    if not is_int(bits) or int(bits) not in ALLOWED_BITS:
        raise ValueError(f"bits={bits!r} is not allowed; bits must be an int in 2..8 or 16")
    width = int(bits)
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not allowed; choose one of {', '.join(SCHEMES)}")
    if width not in bits_for(scheme):
        raise ValueError(
            f"bits={bits} is not allowed with scheme='kmeans'; kmeans supports bits 2..{KMEANS_MAX_BITS} "
            "(a 65536-entry codebook is no longer weight sharing)"
        )
    if not isinstance(granularity, str) or granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r} is not allowed; choose one of {', '.join(GRANULARITIES)}")
    if granularity == "channel" and weight.dim() == 0:
        raise ValueError("granularity='channel' needs a weight with at least 1 dimension, got a 0-d tensor")
    return width, check_axis(axis, weight.dim()) if weight.dim() > 0 else 0


def quantize_weight(
    weight: torch.Tensor,
    bits: int,
    scheme: str = "symmetric",
    granularity: str = "channel",
    axis: int = 0,
) -> QuantizedWeight:
    """Quantize ``weight`` to ``bits`` bits and return the dequantized result with its grid.

    Args:
        weight: floating tensor (not modified). Computation is done in float32.
        bits: 2..8 or 16 (``kmeans``: 2..8 only, see ``bits_for``).
        scheme: ``"symmetric"``, ``"asymmetric"``, ``"pow2"`` or ``"kmeans"`` (see module doc).
        granularity: ``"channel"`` (one range / codebook per slice along ``axis``) or ``"tensor"``.
            ``kmeans`` supports both (per channel: one codebook of ``2**bits`` centroids per
            channel, all channels clustered in one batched Lloyd's run).
        axis: the output-channel axis used by ``"channel"`` granularity.

    Returns:
        :class:`QuantizedWeight`. Exact zeros of ``weight`` are exact zeros of ``values``.
    """
    weight = check_tensor("weight", weight)
    bits, axis = _check_arguments(weight, bits, scheme, granularity, axis)

    w = weight.detach().to(torch.float32)
    rows = _rows(w, granularity, axis)  # [G, N]; a view or copy, never written to
    absmax = rows.abs().amax(dim=1)  # [G]
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    codebook: torch.Tensor | None = None

    if scheme == "symmetric":
        qmax = 2 ** (bits - 1) - 1
        scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
        q = torch.clamp(torch.round(rows / scale[:, None]), -qmax, qmax)
        out = q * scale[:, None]
    elif scheme == "asymmetric":
        qmax = 2**bits - 1
        r_min = rows.amin(dim=1).clamp(max=0.0)
        r_max = rows.amax(dim=1).clamp(min=0.0)
        span = r_max - r_min
        scale = torch.where(span > 0, span / qmax, torch.ones_like(span))
        zp = torch.round(-r_min / scale).clamp(0, qmax)
        q = torch.clamp(torch.round(rows / scale[:, None]) + zp[:, None], 0, qmax)
        out = (q - zp[:, None]) * scale[:, None]
        zero_point = zp.to(torch.int32)
    elif scheme == "pow2":
        n_mag = 2 ** (bits - 1) - 1  # magnitudes 2**-0 .. 2**-(n_mag-1)
        exps = -torch.arange(n_mag, dtype=torch.float32)
        mags = torch.unique(torch.pow(2.0, exps))  # float32 underflow merges tiny ones into 0
        mags = mags[mags > 0]
        codebook = torch.cat([-mags.flip(0), torch.zeros(1), mags])
        scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
        book = codebook[None, :] * scale[:, None]  # [G, K], sorted because scale > 0
        out = book.gather(1, nearest_level(rows, book.contiguous()))
    else:  # kmeans
        book = kmeans_codebook(rows, 2**bits)
        out = book.gather(1, nearest_level(rows, book))
        codebook = book[0] if granularity == "tensor" else book

    if scale is not None and granularity == "tensor":
        scale = scale.reshape(())
        if zero_point is not None:
            zero_point = zero_point.reshape(())
    values = _unrows(out, w, granularity, axis).to(weight.dtype)
    return QuantizedWeight(
        values=values,
        bits=bits,
        scheme=scheme,
        granularity=granularity,
        axis=axis,
        scale=scale,
        zero_point=zero_point,
        codebook=codebook,
    )
