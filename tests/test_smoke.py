import numpy as np

import gncpu
from gncpu import reference


def test_matches_oracle_on_sd_shape():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 320, 16, 16)).astype(np.float32)
    y = gncpu.group_norm(x, 32)
    assert np.abs(y - reference.group_norm(x, 32)).max() <= 2e-6
