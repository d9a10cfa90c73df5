"""Scale-out as docs/scaling.md describes it: a local Ray cluster, Ray Data's
map_batches over a small dataset with one gncpu session per actor; the
outputs equal a local run's, bit for bit. (ray[data] is in the test extra: a
missing Ray is an error here, not a skip.)"""
import os

import numpy as np
import pytest
import ray

import gncpu
from gncpu.onnx import InferenceSession
from conftest import assert_bitwise_equal, subprocess_env
from service_models import VAE_DECODER, SessionPredictor

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def local_ray_cluster(tmp_path, monkeypatch):
    # The actors' processes import the gncpu under test and the shared test models. Ray also
    # puts the driver's working directory on their path: from a fresh clone's root that
    # would be the unbuilt source tree, so start the cluster from elsewhere.
    path = os.pathsep.join([subprocess_env()["PYTHONPATH"], TESTS_DIR])
    monkeypatch.chdir(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_data_map_batches_with_a_session_per_actor(local_ray_cluster):
    latents = np.random.default_rng(0).standard_normal((8, 4, 8, 8)).astype(np.float32)
    dataset = ray.data.from_items([{"index": i, "x": latents[i]} for i in range(len(latents))])
    rows = dataset.map_batches(SessionPredictor, fn_constructor_kwargs={"model_path": VAE_DECODER, "num_threads": 1},
                               batch_size=2, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=1,
                               batch_format="numpy").take_all()

    local = InferenceSession(VAE_DECODER, num_threads=1)  # the actors' options
    assert sorted(int(row["index"]) for row in rows) == list(range(len(latents)))
    for row in rows:
        expected = local.run(None, {"x": latents[int(row["index"])][None]})[0][0]
        assert_bitwise_equal(row["y"], expected, f"(row {int(row['index'])} from a Ray actor)")
    assert {str(row["gncpu_file"]) for row in rows} == {gncpu.__file__}
    # Ray sets OMP_NUM_THREADS to the actor's num_cpus, and gncpu follows it.
    assert {str(row["seen"]) for row in rows} == {"OMP_NUM_THREADS=1 gncpu=1"}
