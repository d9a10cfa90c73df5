"""The compiled variants really are vectorized: their hot loops use packed
instructions of their vector width (checked by disassembly with objdump)."""
import re
import shutil
import subprocess

import pytest

from gncpu.kernel import available_variants

# Packed float32 arithmetic of each variant's width on x86-64.
PACKED = {
    "avx512": re.compile(r"\bv(sub|add|mul|fmadd\d+|fnmadd\d+)ps\b.*%zmm"),
    "avx2": re.compile(r"\bv(sub|add|mul|fmadd\d+|fnmadd\d+)ps\b.*%ymm"),
    "baseline": re.compile(r"\b(sub|add|mul)ps\b.*%xmm"),
}
# The kernel functions Cython emits for float32 (fused index 0), whichever of
# them gcc keeps out of line, and the float32 statistics loop (_sums.h).
HOT = ("chunk_moments", "normalize_group", "apply_block", "apply_range", "affine_table_run",
       "channel_sums", "block_stats", "nhwc_thread", "run_nchw", "run_nhwc")
SUMS = "gn_shifted_sums_f32"


def hot_function_bodies(path):
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True,
                             text=True, check=True).stdout
    bodies, current = {}, None
    for line in listing.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            name = header.group(1)
            current = name if (name == SUMS or "__pyx_fuse_0" in name and any(h in name for h in HOT)) else None
            if current:
                bodies[current] = []
        elif current:
            bodies[current].append(line)
    return bodies


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
@pytest.mark.parametrize("name, module", available_variants(), ids=lambda v: getattr(v, "__name__", v))
def test_hot_loops_use_packed_instructions(name, module):
    if name not in PACKED:
        pytest.skip(f"no packed-instruction pattern for variant {name}")
    bodies = hot_function_bodies(module.__file__)
    assert bodies, f"no float32 kernel functions found in {module.__file__}"
    packed = {fn: sum(bool(PACKED[name].search(line)) for line in lines)
              for fn, lines in bodies.items()}
    # Every float32 kernel function that does arithmetic does it packed.
    assert sum(packed.values()) >= 50, packed
    assert all(count > 0 for fn, count in packed.items() if "omp_fn" not in fn), packed
    if SUMS in packed:  # when gcc keeps it out of line: 4 sums + 4 squares, at least
        assert packed[SUMS] >= 8, packed
