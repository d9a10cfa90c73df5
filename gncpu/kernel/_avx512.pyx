# The avx512 build of the kernels; setup.py gives it its compiler flags.
include "_group_norm.pxi"
include "_onnx_ops.pxi"
