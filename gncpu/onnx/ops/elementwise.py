"""Elementwise ops: arithmetic, comparisons, logic, activations, Cast, Where.

Results keep the ONNX output type: NumPy promotes float32 op float64-scalar
or float16 op int to wider types, so each op casts back where ONNX says the
output type is the input's.

The plan runs every node under np.errstate(all="ignore") (overflow to Inf and
0/0 = NaN are what ONNX specifies), so the hot ops here do not set it
themselves: entering np.errstate costs ~6 us, more than a small Add.
"""
import functools

import numpy as np

from ..registry import register
from . import native


def _same_type(result, like):
    return result if result.dtype == like.dtype else result.astype(like.dtype, copy=False)


def _binary(name, fn, since_versions=(7, 13, 14)):
    def op(a, b):
        return _same_type(np.asarray(fn(a, b)), a)
    op.__name__ = name.lower()
    for since in since_versions:
        register(name, since)(op)
    return op


_binary("Add", np.add)
_binary("Sub", np.subtract)
_binary("Mul", np.multiply)


def _integer_divide(a, b):
    # C-style division truncates toward zero; stay in integers so int64 keeps its digits.
    quotient = np.floor_divide(a, b)
    adjust = (np.remainder(a, b) != 0) & ((a < 0) ^ (b < 0))
    return quotient + adjust.astype(quotient.dtype)


def _divide(a, b):
    if np.issubdtype(a.dtype, np.integer):
        return _integer_divide(a, b)
    return np.divide(a, b)


_binary("Div", _divide)


@register("Pow", 7)
@register("Pow", 12)
@register("Pow", 13)
@register("Pow", 15)
def pow_(x, y):
    with np.errstate(all="ignore"):
        if y.size == 1 and np.issubdtype(x.dtype, np.floating):
            exponent = float(y.reshape(-1)[0])
            if exponent == 2.0:
                return x * x
            if exponent == 0.5:
                return np.sqrt(x)
            if exponent == 1.0:
                return x.copy()
            return _same_type(np.power(x, x.dtype.type(exponent)), x)
        return _same_type(np.power(x, y), x)


@register("Mod", 10)
@register("Mod", 13)
def mod(a, b, *, fmod=0):
    with np.errstate(all="ignore"):
        return np.fmod(a, b) if fmod else np.mod(a, b)


def _variadic(name, fn, since_versions):
    def op(*inputs):
        result = inputs[0]
        for other in inputs[1:]:
            result = fn(result, other)
        return _same_type(np.asarray(result), inputs[0]) if len(inputs) > 1 else np.array(result, copy=True)
    op.__name__ = name.lower()
    for since in since_versions:
        register(name, since)(op)


_variadic("Max", np.maximum, (8, 12, 13))
_variadic("Min", np.minimum, (8, 12, 13))
_variadic("Sum", np.add, (8, 13))


@register("Mean", 8)
@register("Mean", 13)
def mean(*inputs):
    total = inputs[0]
    for other in inputs[1:]:
        total = total + other
    return _same_type(np.asarray(total / len(inputs)), inputs[0])


# ---------------------------------------------------------------- unary math

def _unary(name, fn, since_versions=(6, 13)):
    def op(x):
        return _same_type(np.asarray(fn(x)), x)
    op.__name__ = name.lower()
    for since in since_versions:
        register(name, since)(op)
    return op


_unary("Neg", np.negative)
_unary("Abs", np.abs)
_unary("Sqrt", np.sqrt)
_unary("Reciprocal", np.reciprocal)
_unary("Exp", np.exp)
_unary("Log", np.log)
_unary("Floor", np.floor)
_unary("Ceil", np.ceil)
_unary("Tanh", np.tanh)
_unary("Sign", np.sign, (9, 13))
_unary("Round", np.round, (11, 22))
_unary("Relu", lambda x: np.maximum(x, x.dtype.type(0)), (6, 13, 14))
for _name, _fn in (("Cos", np.cos), ("Sin", np.sin), ("Tan", np.tan), ("Acos", np.arccos), ("Asin", np.arcsin),
                   ("Atan", np.arctan), ("Cosh", np.cosh), ("Sinh", np.sinh), ("Asinh", np.arcsinh),
                   ("Acosh", np.arccosh), ("Atanh", np.arctanh)):
    _unary(_name, _fn, (7, 9, 22))


def sigmoid_array(x):
    """1 / (1 + exp(-x)) in x's dtype: within 0.5 float32 ulp + 1e-6 (see native.py)."""
    if native.native_dtype(x.dtype) is None:
        raise TypeError(f"Sigmoid needs a floating-point input, got {x.dtype}")
    return native.unary(x, "sigmoid")


@register("Sigmoid", 6)
@register("Sigmoid", 13)
def sigmoid(x):
    return sigmoid_array(x)


def erf_array(x):
    """erf elementwise in x's dtype: float32 within 1.5 ulp, float64 as libm;
    integer inputs (which ONNX allows) through float64, truncated back as
    onnx.reference does."""
    if native.native_dtype(x.dtype) is None:
        return _same_type(native.unary(x.astype(np.float64), "erf"), x)
    return native.unary(x, "erf")


@register("Erf", 9)
@register("Erf", 13)
def erf(x):
    return erf_array(x)


@register("Gelu", 20)
def gelu(x, *, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu approximate={approximate!r} must be 'none' or 'tanh'")
    if native.native_dtype(x.dtype) is None:
        raise TypeError(f"Gelu needs a floating-point input, got {x.dtype}")
    return native.unary(x, "gelu_tanh" if approximate == "tanh" else "gelu")


@register("LeakyRelu", 6)
@register("LeakyRelu", 16)
def leaky_relu(x, *, alpha=0.01):
    return _same_type(np.where(x >= 0, x, x * x.dtype.type(alpha)), x)


@register("Elu", 6)
@register("Elu", 22)
def elu(x, *, alpha=1.0):
    with np.errstate(over="ignore"):
        return _same_type(np.where(x >= 0, x, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0))), x)


@register("Selu", 6)
@register("Selu", 22)
def selu(x, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    with np.errstate(over="ignore"):
        negative = x.dtype.type(alpha) * np.expm1(np.minimum(x, 0))
        return _same_type(x.dtype.type(gamma) * np.where(x > 0, x, negative), x)


@register("HardSigmoid", 6)
@register("HardSigmoid", 22)
def hard_sigmoid(x, *, alpha=0.2, beta=0.5):
    return _same_type(np.clip(x * x.dtype.type(alpha) + x.dtype.type(beta), 0, 1), x)


@register("HardSwish", 14)
@register("HardSwish", 22)
def hard_swish(x):
    return _same_type(x * np.clip(x * x.dtype.type(1 / 6) + x.dtype.type(0.5), 0, 1), x)


@register("Softplus", 1)
@register("Softplus", 22)
def softplus(x):
    with np.errstate(over="ignore"):
        return _same_type(np.logaddexp(x, x.dtype.type(0)), x)


@register("Softsign", 1)
@register("Softsign", 22)
def softsign(x):
    return _same_type(x / (x.dtype.type(1) + np.abs(x)), x)


@register("Mish", 18)
@register("Mish", 22)
def mish(x):
    with np.errstate(over="ignore"):
        return _same_type(x * np.tanh(np.logaddexp(x, x.dtype.type(0))), x)


@register("Clip", 11)
@register("Clip", 12)
@register("Clip", 13)
def clip(x, low=None, high=None):
    result = x
    if low is not None:
        result = np.maximum(result, low.reshape(()) if low.size == 1 else low)
    if high is not None:
        result = np.minimum(result, high.reshape(()) if high.size == 1 else high)
    return _same_type(np.array(result, copy=result is x), x)


@register("Clip", 6)
def clip_6(x, *, min=-3.4028234663852886e38, max=3.4028234663852886e38):  # noqa: A002 - the spec's names
    return _same_type(np.clip(x, min, max), x)


# ---------------------------------------------------------------- comparisons and logic

def _compare(name, fn, since_versions):
    def op(a, b):
        return fn(a, b)
    op.__name__ = name.lower()
    for since in since_versions:
        register(name, since)(op)


_compare("Equal", np.equal, (7, 11, 13, 19))
_compare("Less", np.less, (7, 9, 13))
_compare("Greater", np.greater, (7, 9, 13))
_compare("LessOrEqual", np.less_equal, (12, 16))
_compare("GreaterOrEqual", np.greater_equal, (12, 16))
_compare("And", np.logical_and, (7,))
_compare("Or", np.logical_or, (7,))
_compare("Xor", np.logical_xor, (7,))


@register("Not", 1)
def not_(x):
    return np.logical_not(x)


@register("IsNaN", 9)
@register("IsNaN", 13)
@register("IsNaN", 20)
def is_nan(x):
    return np.isnan(x)


@register("IsInf", 10)
@register("IsInf", 20)
def is_inf(x, *, detect_negative=1, detect_positive=1):
    if detect_negative and detect_positive:
        return np.isinf(x)
    if detect_negative:
        return np.isneginf(x)
    if detect_positive:
        return np.isposinf(x)
    return np.zeros(x.shape, dtype=bool)


@register("Where", 9)
@register("Where", 16)
def where(condition, x, y):
    return np.where(condition, x, y).astype(np.result_type(x, y), copy=False)


# ---------------------------------------------------------------- types

_PLAIN_TYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                "float32", "float64"}


@functools.lru_cache(maxsize=None)
def _numpy_type(to):
    """The NumPy dtype of ONNX element type `to` (onnx's lookup costs microseconds a call)."""
    import onnx
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(to))


def cast_to_type(x, to, saturate=1, round_mode="up"):
    """x cast to ONNX element type `to`. NumPy's astype covers the standard types;
    float8/float4/int4/bfloat16 and strings follow onnx's own conversion rules
    (saturation, rounding modes), which plain astype does not."""
    target = _numpy_type(to)
    if target.name in _PLAIN_TYPES and x.dtype.name in _PLAIN_TYPES:
        if target == x.dtype:
            return x.copy()
        with np.errstate(invalid="ignore", over="ignore"):
            return x.astype(target)
    from onnx.reference.ops.op_cast import cast_to
    return cast_to(x, to, bool(saturate), round_mode)


@register("Cast", 6)
@register("Cast", 9)
@register("Cast", 13)
@register("Cast", 19)
@register("Cast", 21)
@register("Cast", 23)
@register("Cast", 24)
def cast(x, *, to, saturate=1, round_mode="up"):
    return cast_to_type(x, to, saturate, round_mode)


@register("CastLike", 15)
@register("CastLike", 19)
@register("CastLike", 21)
@register("CastLike", 23)
@register("CastLike", 24)
def cast_like(x, like, *, saturate=1, round_mode="up"):
    import onnx
    return cast_to_type(x, onnx.helper.np_dtype_to_tensor_dtype(like.dtype), saturate, round_mode)


@register("Identity", 1)
@register("Identity", 13)
@register("Identity", 14)
@register("Identity", 16)
@register("Identity", 19)
@register("Identity", 21)
def identity(x):
    # Values are never written in place by ops, so sharing the buffer is safe.
    return x
