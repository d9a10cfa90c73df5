"""CPU emulation of gncpu's CUDA kernels (see driver.py), and the rule for
missing tools: tests skip with the reason, except where the environment sets
GNCPU_REQUIRE_CUDA_TOOLCHAIN=1 (CI does): there a missing nvcc, NVRTC or C++
compiler fails the run instead of hiding the checks."""
import os

import pytest


def unavailable(reason):
    """Skip the calling test (or module) for `reason`, or fail it in CI."""
    if os.environ.get("GNCPU_REQUIRE_CUDA_TOOLCHAIN") == "1":
        pytest.fail(f"GNCPU_REQUIRE_CUDA_TOOLCHAIN=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
