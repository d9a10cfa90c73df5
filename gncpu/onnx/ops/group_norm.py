"""Group normalization ops, all running the native gncpu kernel.

- ai.onnx GroupNormalization-18: scale and bias hold one value per *group*.
- ai.onnx GroupNormalization-21: scale and bias hold one value per *channel*;
  `stash_type` is the precision of the statistics stage. The kernel always
  computes statistics in float32 or wider (float64 for float64 input), which
  is at least what any stash_type asks for, so it changes nothing here.
- com.microsoft GroupNorm / SkipGroupNorm: onnxruntime's contrib ops (NHWC by
  default, `activation` 1 = SiLU) that onnxruntime itself only runs on CUDA.
- gncpu GroupNorm: the node the fusion passes (gncpu.onnx.fusion) emit.

The two ai.onnx versions are incompatible, so an opset-18 model must run the
18 semantics even though onnx.checker now rejects it and
onnx.version_converter (20 -> 21) leaves its scale at (G).
"""
import functools

import numpy as np

from ... import _config, functional
from .. import context
from ..registry import register

# gncpu GroupNorm's activation attribute; "" is none.
FUSED_ACTIVATIONS = ("", "silu", "relu", "gelu", "gelu_tanh")
# com.microsoft GroupNorm's integer activation codes.
_CONTRIB_ACTIVATIONS = {0: "", 1: "silu"}

_SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))


def _check_input(op, x):
    x = np.asarray(x)
    if x.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"{op}: input X has dtype {x.dtype}, expected float32, float16 or float64")
    if x.ndim < 2:
        raise ValueError(f"{op}: input X must have rank >= 2 (N, C, ...), got shape {x.shape}")
    return x


def _check_groups(op, num_groups, channels, shape):
    if num_groups is None:
        raise ValueError(f"{op}: the required attribute num_groups is missing")
    groups = int(num_groups)
    if groups <= 0 or channels % groups:
        raise ValueError(f"{op}: num_groups={groups} must be positive and divide the channel "
                         f"count C={channels} (input shape {shape})")
    return groups


def _per_channel(op, name, value, channels, what="(C,)"):
    """An optional (C,) parameter as a float array, None if absent."""
    if value is None:
        return None
    value = np.asarray(value)
    if value.shape != (channels,):
        raise ValueError(f"{op}: input {name} must have shape {what} = ({channels},), "
                         f"got shape {value.shape}")
    if value.dtype.kind != "f":
        raise TypeError(f"{op}: input {name} has dtype {value.dtype}, expected a float type")
    return value


def _run(x, groups, scale, bias, epsilon, *, activation="", channels_last=False,
         skip=None, skip_bias=None, return_sum=False):
    return functional.group_norm(
        x, groups, scale, bias, float(epsilon), activation=activation or None,
        channels_last=bool(channels_last), skip=skip, skip_bias=skip_bias, return_sum=return_sum,
        num_threads=context.num_threads())


@register("GroupNormalization", since=18)
def group_normalization_18(x, scale, bias, *, num_groups=None, epsilon=1e-5):
    op = "GroupNormalization-18"
    x = _check_input(op, x)
    channels = x.shape[1]
    groups = _check_groups(op, num_groups, channels, x.shape)
    for name, value in (("scale", scale), ("bias", bias)):
        if np.shape(value) != (groups,):
            raise ValueError(f"{op}: input {name} must have shape (num_groups,) = ({groups},) "
                             f"(one value per group at opset 18-20), got shape {np.shape(value)}")
    # Opset 18 scales per group: each group's value covers its C/G channels.
    per_group = channels // groups
    scale = np.repeat(np.asarray(scale), per_group)
    bias = np.repeat(np.asarray(bias), per_group)
    return _run(x, groups, scale, bias, epsilon)


@register("GroupNormalization", since=21)
def group_normalization_21(x, scale, bias, *, num_groups=None, epsilon=1e-5, stash_type=1):
    op = "GroupNormalization-21"
    x = _check_input(op, x)
    channels = x.shape[1]
    groups = _check_groups(op, num_groups, channels, x.shape)
    scale = _per_channel(op, "scale", scale, channels)
    bias = _per_channel(op, "bias", bias, channels)
    if scale is None or bias is None:
        raise ValueError(f"{op}: inputs scale and bias are required")
    if int(stash_type) not in (1, 10, 11, 16):  # float, float16, double, bfloat16
        raise ValueError(f"{op}: stash_type={stash_type} is not a floating-point TensorProto type "
                         f"(expected 1, 10, 11 or 16)")
    return _run(x, groups, scale, bias, epsilon)


def _contrib_activation(op, activation):
    if activation not in _CONTRIB_ACTIVATIONS:
        raise ValueError(f"{op}: activation={activation} is not supported: expected 0 (none) or 1 (SiLU)")
    return _CONTRIB_ACTIVATIONS[activation]


def _channels(x, channels_last):
    return x.shape[-1] if channels_last else x.shape[1]


@register("GroupNorm", since=1, domain="com.microsoft")
def contrib_group_norm(x, gamma, beta, *, groups=None, activation=None, channels_last=1,
                       epsilon=1e-5):
    x, num_groups, gamma, beta, act = _contrib_arguments("com.microsoft.GroupNorm", x, gamma, beta,
                                                         groups, activation, channels_last)
    return _run(x, num_groups, gamma, beta, epsilon, activation=act, channels_last=channels_last)


def _contrib_arguments(op, x, gamma, beta, groups, activation, channels_last):
    """The checks GroupNorm and SkipGroupNorm share: (x, num_groups, gamma, beta, activation)."""
    x = _check_input(op, x)
    if activation is None:
        raise ValueError(f"{op}: the required attribute activation is missing")
    act = _contrib_activation(op, activation)
    channels = _channels(x, channels_last)
    num_groups = _check_groups(op, groups, channels, x.shape)
    gamma = _per_channel(op, "gamma", gamma, channels)
    beta = _per_channel(op, "beta", beta, channels)
    return x, num_groups, gamma, beta, act


def _broadcast_skip(op, skip, x, channels_last):
    """SkipGroupNorm's skip is (N, H, W, C), (N, 1, 1, C) or (N, C) (NHWC)."""
    skip = np.asarray(skip)
    if skip.shape == x.shape:
        return skip
    n, channels = x.shape[0], x.shape[-1]
    if channels_last and skip.shape in ((n, channels), (n,) + (1,) * (x.ndim - 2) + (channels,)):
        return np.broadcast_to(skip.reshape((n,) + (1,) * (x.ndim - 2) + (channels,)), x.shape)
    raise ValueError(f"{op}: input skip has shape {skip.shape}; expected the input's shape {x.shape}, "
                     f"({n}, 1, ..., 1, {channels}) or ({n}, {channels})")


@register("SkipGroupNorm", since=1, domain="com.microsoft", wants_output_count=True)
def contrib_skip_group_norm(x, gamma, beta, skip, bias=None, *, groups=None, activation=None,
                            channels_last=1, epsilon=1e-5, _num_outputs=1):
    op = "com.microsoft.SkipGroupNorm"
    x, num_groups, gamma, beta, act = _contrib_arguments(op, x, gamma, beta, groups, activation,
                                                         channels_last)
    bias = _per_channel(op, "bias", bias, _channels(x, channels_last))
    if skip is None:
        raise ValueError(f"{op}: input skip is required")
    skip = _broadcast_skip(op, skip, x, channels_last)
    y, total = _run(x, num_groups, gamma, beta, epsilon, activation=act,
                    channels_last=channels_last, skip=skip, skip_bias=bias, return_sum=True)
    return (y, total) if _num_outputs > 1 else y


@register("GroupNorm", since=1, domain="gncpu", wants_output_count=True)
def fused_group_norm(x, scale=None, bias=None, skip=None, skip_bias=None, *, num_groups=None,
                     epsilon=1e-5, activation="", channels_last=0, _num_outputs=1):
    """The fused node: x (N, C, ...) or (N, ..., C) with channels_last=1;
    optional per-channel scale/bias; optional skip (x's shape) and skip_bias (C,)
    added first, their sum returned as a second output when the node has one."""
    op = "gncpu.GroupNorm"
    x = _check_input(op, x)
    if activation not in FUSED_ACTIVATIONS:
        raise ValueError(f"{op}: activation={activation!r} is not one of {FUSED_ACTIVATIONS}")
    channels = _channels(x, channels_last)
    groups = _check_groups(op, num_groups, channels, x.shape)
    scale = _per_channel(op, "scale", scale, channels)
    bias = _per_channel(op, "bias", bias, channels)
    skip_bias = _per_channel(op, "skip_bias", skip_bias, channels)
    if skip is not None and np.shape(skip) != x.shape:
        raise ValueError(f"{op}: input skip has shape {np.shape(skip)}, expected the input's shape {x.shape}")
    return_sum = _num_outputs > 1
    if return_sum and skip is None and skip_bias is None:
        raise ValueError(f"{op}: a second output (the sum) needs a skip or skip_bias input")
    return _run(x, groups, scale, bias, epsilon, activation=activation, channels_last=channels_last,
                skip=skip, skip_bias=skip_bias, return_sum=return_sum)


def prepare_fused_group_norm(node, constants):
    """A faster call for a gncpu GroupNorm node whose scale and bias are
    constants (what the fusion passes emit), or None when it has a skip input
    or its attributes would fail (the general op then raises the clear error).

    The node's attributes and weights are checked once, here, exactly as
    fused_group_norm checks them; a run then only checks that x is a
    C-contiguous float32/float64 array with the expected channels and calls
    the kernel, which saves the ~4 us of per-call validation that dominated
    GroupNorms on small activations. float16 is computed as the general op
    does (in float32 on a copy, rounded back). Anything else (strided or
    channels-last views, a wrong shape) goes through fused_group_norm, so
    results and errors are those of the general op."""
    from ...kernel import kernels

    inputs = list(node.inputs) + [""] * (5 - len(node.inputs))
    if any(inputs[3:]) or len(node.outputs) != 1:
        return None
    attrs = node.attrs
    activation = attrs.get("activation", "")
    epsilon = float(attrs.get("epsilon", 1e-5))
    groups = attrs.get("num_groups")
    if activation not in FUSED_ACTIVATIONS or groups is None or not 0.0 <= epsilon < np.inf:
        return None
    try:
        params = [None if not name else np.asarray(constants[name]) for name in inputs[1:3]]
    except KeyError:  # scale or bias computed at run time
        return None
    # Channels, from the weights; 0 when the node has none (exporters drop an identity
    # affine), and a run then takes any channel count the groups divide.
    channels = next((p.shape[0] for p in params if p is not None and p.ndim == 1), None)
    groups = int(groups)
    if channels is None:
        if any(p is not None for p in params):
            return None
        channels = 0
    if (groups <= 0 or channels % groups
            or any(p is not None and (p.shape != (channels,) or p.dtype.kind != "f") for p in params)):
        return None
    code = kernels.ACTIVATION_CODES[activation or None]
    channels_last = bool(attrs.get("channels_last", 0))
    axis = -1 if channels_last else 1
    weights = {dtype: [None if p is None else np.ascontiguousarray(p, dtype) for p in params]
               for dtype in (np.dtype(np.float32), np.dtype(np.float64))}
    general = functools.partial(fused_group_norm, num_groups=groups, epsilon=epsilon, activation=activation,
                                channels_last=int(channels_last))
    min_rank = 3 if channels_last else 2
    resolve_threads = _config.resolve_threads
    op_name = node.describe()

    def fits(x):
        return (type(x) is np.ndarray and x.ndim >= min_rank and x.flags.c_contiguous and x.size
                and (x.shape[axis] == channels or not channels and x.shape[axis] % groups == 0))

    def half(x, y, num_threads):
        """float16 as the general op computes it: in float32 on a copy, rounded back
        (through the kernels' F16C conversions where built, as functional does)."""
        threads = resolve_threads(num_threads, x.size)
        work = functional._to_compute(x, np.dtype(np.float32), threads)
        w, b = weights[np.dtype(np.float32)]
        kernels.group_norm(work, work, w, b, groups, epsilon, code, threads, channels_last)
        if y is None:
            return functional._from_compute(work, np.dtype(np.float16), threads)
        if not functional._half_into(work, y, threads):
            np.copyto(y, work, casting="unsafe")
        return y

    def call(x, scale=None, bias=None, *rest):
        if fits(x):
            if x.dtype in weights:
                w, b = weights[x.dtype]
                y = np.empty_like(x)
                kernels.group_norm(x, y, w, b, groups, epsilon, code,
                                   resolve_threads(context.num_threads(), x.size), channels_last)
                return y
            if x.dtype == np.float16:
                return half(x, None, context.num_threads())
        return general(x, scale, bias, *rest)

    def into(x, y, num_threads):
        """call(x) written into y (x's shape and dtype, C-contiguous) on up to num_threads
        threads: what a bound run of the onnxruntime engine calls (gncpu.onnx.bound_run)."""
        if fits(x) and y.dtype == x.dtype and y.shape == x.shape and y.flags.c_contiguous:
            if x.dtype in weights:
                w, b = weights[x.dtype]
                threads = 1 if num_threads == 1 else resolve_threads(num_threads, x.size)
                kernels.group_norm(x, y, w, b, groups, epsilon, code, threads, channels_last)
                return
            if x.dtype == np.float16:
                half(x, y, num_threads)
                return
        with context.using_threads(num_threads):
            result = np.asarray(general(x, *params))
        if result.shape != y.shape or result.dtype != y.dtype:
            from ..bound_run import BindingMismatch
            raise BindingMismatch(f"{op_name}: returned {result.dtype}{result.shape}, bound {y.dtype}{y.shape}")
        np.copyto(y, result)

    def kernel_arguments(dtype):
        """(weight, bias, groups, epsilon, activation code, channels_last) for
        kernels.group_norm on a C-contiguous x of `dtype` whose shape fits the node
        (float32/float64), else None: a bound run calls the kernel with them."""
        dtype = np.dtype(dtype)
        if dtype not in weights:
            return None
        return (*weights[dtype], groups, epsilon, code, channels_last)

    call.into = into
    call.kernel_arguments = kernel_arguments
    return call
