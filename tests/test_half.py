"""float16 <-> float32 conversions of the kernels (F16C, see gncpu/kernel/_half.h):
bit-identical to NumPy's casts on every float16 value and on float32 values
around every rounding boundary, for every length (vector tails) and thread
count; misuse raises instead of reading out of bounds."""
import numpy as np
import pytest

from gncpu.kernel import kernels
from conftest import SELECTED_VARIANT

# The baseline variant (no F16C) has no conversion functions: float16 goes through
# NumPy's casts there, which the last test covers on every variant.
needs_f16c = pytest.mark.skipif(not kernels.HAVE_FLOAT16,
                                reason=f"variant {SELECTED_VARIANT} converts float16 with NumPy (no F16C)")

EVERY_HALF = np.arange(1 << 16, dtype=np.uint16).view(np.float16)


def _same_bits(a, b):
    """Equal bit patterns, NaNs only required to be NaN (payloads may differ)."""
    nan = np.isnan(b)
    assert np.array_equal(np.isnan(a), nan)
    wide = np.uint32 if a.dtype == np.float32 else np.uint16
    np.testing.assert_array_equal(a[~nan].view(wide), b[~nan].view(wide))


@needs_f16c
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_float16_value_widens_exactly(threads):
    got = kernels.half_to_float(EVERY_HALF, np.full(EVERY_HALF.size, np.nan, np.float32), threads)
    _same_bits(got, EVERY_HALF.astype(np.float32))


@needs_f16c
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_narrowing_rounds_to_nearest_even_as_numpy(threads):
    rng = np.random.default_rng(1)
    finite = EVERY_HALF[np.isfinite(EVERY_HALF)].astype(np.float32)
    finite.sort()
    midpoints = (finite[:-1] + finite[1:]) / 2                       # exact ties
    nudged = np.concatenate([np.nextafter(midpoints, np.inf), np.nextafter(midpoints, -np.inf)])
    scaled = np.concatenate([rng.standard_normal(1 << 16).astype(np.float32) * s
                             for s in (1e-9, 1e-6, 1e-3, 1, 1e3, 6.6e4, 1e6)])   # subnormal .. overflow
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65520, -65520, 3e38], np.float32)
    values = np.concatenate([finite, midpoints, nudged, scaled, special]).astype(np.float32)
    got = kernels.float_to_half(values, np.empty(values.size, np.float16), threads)
    with np.errstate(over="ignore"):
        _same_bits(got, values.astype(np.float16))


@needs_f16c
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 31, 65535, 65536, 65537, 200003])
def test_every_length_converts_every_element(n):
    rng = np.random.default_rng(n)
    half = rng.standard_normal(n).astype(np.float16)
    wide = kernels.half_to_float(half, np.full(n, np.nan, np.float32), 2)
    _same_bits(wide, half.astype(np.float32))
    back = np.full(n, np.nan, np.float16)
    kernels.float_to_half(wide * np.float32(1.5), back, 2)
    _same_bits(back, (wide * np.float32(1.5)).astype(np.float16))


@needs_f16c
def test_misuse_raises():
    half, single = np.zeros(8, np.float16), np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="float16 and float32"):
        kernels.half_to_float(single, single)
    with pytest.raises(ValueError, match="sizes differ"):
        kernels.half_to_float(half, np.zeros(9, np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        kernels.float_to_half(np.zeros(16, np.float32)[::2], half)


@pytest.mark.parametrize("channels_last", [False, True])
def test_float16_group_norm_matches_the_numpy_cast_path(channels_last):
    """The float16 entry point gives the bytes it gave with NumPy's casts: the
    float32 kernel on the widened input, rounded back."""
    import gncpu

    rng = np.random.default_rng(4)
    shape = (2, 6, 5, 32) if channels_last else (2, 32, 6, 5)
    x = (rng.standard_normal(shape) * 3 + 40).astype(np.float16)
    w = rng.standard_normal(32).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    for activation in (None, "silu"):
        want = gncpu.group_norm(x.astype(np.float32), 8, w, b, activation=activation,
                                channels_last=channels_last).astype(np.float16)
        np.testing.assert_array_equal(gncpu.group_norm(x, 8, w, b, activation=activation,
                                                       channels_last=channels_last), want)
        out = np.full(shape, np.nan, np.float16)
        gncpu.group_norm(x, 8, w, b, activation=activation, channels_last=channels_last, out=out)
        np.testing.assert_array_equal(out, want)
    nchw_strides = np.ascontiguousarray(np.moveaxis(x, 1, -1)) if not channels_last else None
    if nchw_strides is not None:   # an NCHW-shaped array with channels-last strides
        view = np.moveaxis(nchw_strides, -1, 1)
        want = gncpu.group_norm(view.astype(np.float32), 8, w, b).astype(np.float16)
        np.testing.assert_array_equal(gncpu.group_norm(view, 8, w, b), want)


def test_which_variants_convert_and_the_others_say_so():
    """avx2 and avx512 builds (x86-64-v3/v4 include F16C) convert; the baseline build
    does not, and calling its conversion raises instead of returning garbage."""
    assert kernels.HAVE_FLOAT16 == (SELECTED_VARIANT in ("avx2", "avx512"))
    if not kernels.HAVE_FLOAT16:
        with pytest.raises(RuntimeError, match="no float16 conversion"):
            kernels.half_to_float(np.zeros(4, np.float16), np.zeros(4, np.float32))
