"""The unchanged CUDA kernels, run on the CPU by the emulation in
tests/cuda_emulation with the launch plan the CuPy launcher uses, against
the float64 oracle."""
import numpy as np
import pytest

from cuda_emulation import unavailable
from gncpu import reference
from gncpu.cuda import plan as cuda_plan

driver = pytest.importorskip("cuda_emulation.driver", reason="tests/cuda_emulation is not importable")
if driver.compiler() is None:
    unavailable("no C++ compiler (g++ or $CXX) to build the CUDA emulation")

# float32 against float64; the offset-1e4 bound is the (the mean
# itself is then only known to ~5e-4 in float32: the shift keeps it out of y).
TOL = 1e-5
TOL_OFFSET = 2e-5
# small chunks give several blocks per group from arrays the emulation runs fast
SMALL_CHUNK = 64


@pytest.fixture(scope="module")
def kernels():
    return driver.build()


def make_case(rng, shape, channels_last, offset=0.0, affine=True):
    x = (rng.standard_normal(shape) + offset).astype(np.float32)
    channels = shape[-1] if channels_last else shape[1]
    weight = rng.standard_normal(channels).astype(np.float32) if affine else None
    bias = rng.standard_normal(channels).astype(np.float32) if affine else None
    return x, weight, bias


def check(kernels, x, groups, weight, bias, tol=TOL, **kw):
    y, plan = driver.group_norm(kernels, x, groups, weight, bias, **kw)
    expected = reference.group_norm(x, groups, weight, bias, eps=kw.get("eps", 1e-5),
                                    activation=kw.get("activation"), channels_last=kw.get("channels_last", False))
    assert y.shape == x.shape
    assert np.isfinite(y).all(), "some outputs were not written (NaN-filled output) or are not finite"
    err = np.abs(y - expected).max()
    assert err <= tol, f"max error {err:.3g} > {tol:g}; launches {[l.kernel for l in plan.launches]}"
    return y, plan


SHAPES = [
    # (shape in NCHW order, groups): G = 1, G = C, odd sizes, rank 2 and 3 and 5
    ((2, 8, 5, 5), 2),
    ((1, 6, 7, 3), 1),
    ((3, 6, 3, 3), 6),
    ((2, 12, 4, 4), 3),
    ((2, 32, 4, 8), 8),
    ((4, 10), 5),
    ((2, 8, 9), 4),
    ((1, 4, 3, 2, 5), 2),
]


def to_layout(shape, channels_last):
    return (shape[0], *shape[2:], shape[1]) if channels_last else shape


@pytest.mark.parametrize("shape,groups", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("chunk_elements", [cuda_plan.CHUNK_ELEMENTS, SMALL_CHUNK])
def test_matches_oracle(kernels, shape, groups, channels_last, activation, chunk_elements):
    rng = np.random.default_rng(abs(hash((shape, groups, channels_last))) % 2**32)
    x, w, b = make_case(rng, to_layout(shape, channels_last), channels_last)
    check(kernels, x, groups, w, b, activation=activation, channels_last=channels_last,
          chunk_elements=chunk_elements)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_multi_chunk_groups_default_plan(kernels, channels_last, activation):
    # one group of 3 x 4096 + 500 elements: 4 blocks per group with the real
    # chunk size; N * G = 2 blocks' worth of rows, far fewer than any GPU's SMs
    rng = np.random.default_rng(1)
    shape = to_layout((2, 6, 64, 33), channels_last)
    x, w, b = make_case(rng, shape, channels_last)
    _, plan = check(kernels, x, 2, w, b, activation=activation, channels_last=channels_last)
    assert plan.launches[0].grid[1] > 1


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("chunk_elements", [cuda_plan.CHUNK_ELEMENTS, SMALL_CHUNK])
def test_offset_data(kernels, channels_last, chunk_elements):
    # x = 1e4 + N(0, 1): E[x^2] - E[x]^2 in float32 would give garbage here
    rng = np.random.default_rng(2)
    x, w, b = make_case(rng, to_layout((2, 8, 16, 12), channels_last), channels_last, offset=1e4)
    check(kernels, x, 4, w, b, tol=TOL_OFFSET, channels_last=channels_last, chunk_elements=chunk_elements)


@pytest.mark.parametrize("shape,groups", [
    ((1, 3, 2048), 1),      # C/G = 2048 > the 1024-channel tile: a group spans 2 tiles
    ((2, 5, 1280), 32),     # C/G = 40: tiles of 640 channels, 16 groups each
    ((2, 7, 3, 320), 32),   # SD: C/G = 10, one 320-channel tile; float4s straddle groups
    ((1, 9, 512), 512),     # G = C
    ((3, 11, 12), 4),       # C/G = 3
])
@pytest.mark.parametrize("chunk_elements", [cuda_plan.CHUNK_ELEMENTS, SMALL_CHUNK])
def test_nhwc_tiled_stats(kernels, shape, groups, chunk_elements):
    rng = np.random.default_rng(10)
    x, w, b = make_case(rng, shape, True, offset=3.0)
    _, plan = check(kernels, x, groups, w, b, channels_last=True, chunk_elements=chunk_elements,
                    activation="silu")
    assert plan.launches[0].kernel == "gn_stats_nhwc_tiled"
    assert plan.launches[2].kernel == "gn_apply_nhwc_tiled_silu"


def test_outlier_first_element(kernels):
    # the group shift K is the first element; make it far from the rest
    rng = np.random.default_rng(3)
    x, w, b = make_case(rng, (1, 4, 32, 32), False, offset=1e3)
    x[0, 0, 0, 0] = -3e3
    check(kernels, x, 1, w, b, tol=TOL_OFFSET, chunk_elements=SMALL_CHUNK)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("x_offset,y_offset", [(1, 0), (0, 1), (3, 2)])
def test_misaligned_data_runs_scalar_kernels(kernels, channels_last, x_offset, y_offset):
    rng = np.random.default_rng(4)
    x, w, b = make_case(rng, to_layout((2, 8, 4, 4), channels_last), channels_last)
    _, plan = check(kernels, x, 2, w, b, channels_last=channels_last, x_offset=x_offset, y_offset=y_offset,
                    activation="silu")
    assert not plan.launches[-1].kernel.count("vec4")


def test_no_affine_and_eps(kernels):
    rng = np.random.default_rng(5)
    x, _, _ = make_case(rng, (2, 4, 3, 3), False, affine=False)
    check(kernels, x * 1e-3, 2, None, None, eps=1e-2)


def test_constant_group_gives_bias(kernels):
    x = np.full((1, 4, 4, 4), 7.0, np.float32)
    bias = np.arange(4, dtype=np.float32)
    y, _ = driver.group_norm(kernels, x, 2, None, bias)
    np.testing.assert_array_equal(y, np.broadcast_to(bias[None, :, None, None], x.shape))


def test_nan_poisons_its_group_only(kernels):
    rng = np.random.default_rng(6)
    x, w, b = make_case(rng, (1, 4, 8, 8), False)
    x[0, 1, 3, 3] = np.nan
    y, _ = driver.group_norm(kernels, x, 2, w, b, chunk_elements=SMALL_CHUNK)
    assert np.isnan(y[0, :2]).all()
    assert np.isfinite(y[0, 2:]).all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_bitwise_reproducible(kernels, channels_last):
    rng = np.random.default_rng(7)
    x, w, b = make_case(rng, to_layout((2, 8, 12, 12), channels_last), channels_last)
    first, _ = driver.group_norm(kernels, x, 4, w, b, channels_last=channels_last, chunk_elements=SMALL_CHUNK)
    for _ in range(2):
        again, _ = driver.group_norm(kernels, x, 4, w, b, channels_last=channels_last,
                                     chunk_elements=SMALL_CHUNK)
        np.testing.assert_array_equal(first, again)


def test_random_shapes(kernels):
    rng = np.random.default_rng(8)
    for _ in range(12):
        groups = int(rng.integers(1, 5))
        channels = groups * int(rng.integers(1, 6))
        spatial = tuple(int(s) for s in rng.integers(1, 12, size=int(rng.integers(0, 3))))
        batch = int(rng.integers(1, 4))
        channels_last = bool(rng.integers(2))
        shape = to_layout((batch, channels, *spatial), channels_last)
        x, w, b = make_case(rng, shape, channels_last, offset=float(rng.choice([0.0, 50.0])))
        check(kernels, x, groups, w, b, channels_last=channels_last,
              activation=[None, "silu"][int(rng.integers(2))],
              chunk_elements=int(rng.choice([4, 8, SMALL_CHUNK, cuda_plan.CHUNK_ELEMENTS])),
              x_offset=int(rng.integers(2)))


def test_every_kernel_is_exercised(kernels):
    """The cases above between them launch every kernel the .cu defines."""
    cases = [
        dict(shape=(2, 8, 4, 4), channels_last=False, x_offset=0),  # vec4 stats and apply
        dict(shape=(2, 8, 3, 3), channels_last=False, x_offset=0),  # vec4 stats, scalar apply
        dict(shape=(2, 8, 4, 4), channels_last=False, x_offset=1),  # scalar everything
        dict(shape=(2, 4, 4, 8), channels_last=True, x_offset=0),   # tiled NHWC stats, vec4 apply
        dict(shape=(2, 4, 4, 6), channels_last=True, x_offset=0),   # Cg = 3: scalar stats, C % 4 != 0
        dict(shape=(2, 4, 4, 8), channels_last=True, x_offset=1),   # misaligned NHWC
        dict(shape=(1, 3, 1052), channels_last=True, x_offset=0),   # C = 4 x 263: flat float4 apply
    ]
    used = set()
    rng = np.random.default_rng(9)
    for case in cases:
        for activation in (None, "silu"):
            x, w, b = make_case(rng, case["shape"], case["channels_last"])
            _, plan = check(kernels, x, 2, w, b, activation=activation, channels_last=case["channels_last"],
                            x_offset=case["x_offset"])
            used.update(launch.kernel for launch in plan.launches)
    assert used == set(cuda_plan.KERNEL_NAMES) == set(kernels.kernel_names())


@pytest.mark.parametrize("name", cuda_plan.KERNEL_NAMES)
def test_plan_arguments_match_kernel_signatures(kernels, name):
    # the driver checks every launch; here, the table of kernels itself
    assert set(kernels.signature(name)) <= set("pIiQf")


def test_wrong_argument_type_is_caught(kernels):
    bad = cuda_plan.Launch("gn_stats_nchw", (1, 1, 1), (cuda_plan.BLOCK_THREADS, 1, 1),
                           (cuda_plan.X, cuda_plan.PARTIALS, np.int64(16), np.uint32(16)))
    with pytest.raises(TypeError, match="argument 2"):
        kernels.launch(bad, {cuda_plan.X: np.zeros(16, np.float32), cuda_plan.PARTIALS: np.zeros(3, np.float32)})
