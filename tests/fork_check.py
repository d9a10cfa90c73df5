"""Run by test_fork.py in a subprocess of its own (a hang there cannot block
pytest, and its process group is killed afterwards):

    python fork_check.py WORKLOAD MECHANISM OUT.npz

The parent computes WORKLOAD multi-threaded (num_threads=2, big enough to
open an OpenMP parallel region and, for a session, to split its convolution
over the session's thread pool), then forks through MECHANISM and has the
children compute it again. OUT.npz holds the parent's and the children's
results and what each child's gncpu config said about the fork. Every wait on
a child has a timeout: a hung child makes this script exit 3.
"""
import concurrent.futures
import io
import multiprocessing
import os
import select
import sys

import numpy as np

import gncpu
from gncpu import _config

# Run with python -P (so the repo root cannot shadow the gncpu under test): the
# shared test models sit beside this script.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WAIT_SECONDS = 60
HUNG = 3

_compute = None  # set in main(); module-level so fork children find it by name


def child_task():
    """What a child computes and reports: (fork line of its config, result)."""
    return _config.config()["fork"], _compute()


def make_workload(name):
    rng = np.random.default_rng(11)
    if name == "group_norm":
        x = rng.standard_normal((2, 64, 64, 64)).astype(np.float32)
        w, b = rng.standard_normal(64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
        return lambda: gncpu.group_norm(x, 32, w, b, activation="silu", num_threads=2)
    if name in ("onnx_session", "onnx_session_ort"):
        from gncpu.onnx import InferenceSession
        from service_models import conv_gn_silu_model, feeds_for

        if name == "onnx_session":
            session = InferenceSession(conv_gn_silu_model(), num_threads=2, engine="gncpu")
        else:
            # A GroupNorm big enough for the onnxruntime engine to run it on 2 threads, and a
            # Conv region that gets an onnxruntime thread pool.
            session = InferenceSession(conv_gn_silu_model(shape=(2, 64, 64, 64)), num_threads=2,
                                       engine="onnxruntime")
            threads = session.stats()["partition"]["region_threads"]
            if threads != [2]:
                raise SystemExit(f"the Conv region was expected to get a 2-thread pool, got {threads}")
        feeds = feeds_for(session)
        return lambda: session.run(None, feeds)[0]
    raise SystemExit(f"unknown workload {name!r}")


def via_pool(context):
    with context.Pool(2) as pool:  # leaving the block terminates the workers, hung or not
        pending = [pool.apply_async(child_task) for _ in range(2)]
        return [p.get(timeout=WAIT_SECONDS) for p in pending]


def via_executor(context):
    executor = concurrent.futures.ProcessPoolExecutor(2, mp_context=context)
    try:
        futures = [executor.submit(child_task) for _ in range(2)]
        return [f.result(timeout=WAIT_SECONDS) for f in futures]
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def via_os_fork(context):
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, leave without running the parent's cleanups
        os.close(read_end)
        status = 1
        try:
            note, result = child_task()
            with os.fdopen(write_end, "wb") as pipe:
                np.savez(pipe, note=note, result=result)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        if not select.select([pipe], [], [], WAIT_SECONDS)[0]:
            raise concurrent.futures.TimeoutError("the os.fork child sent nothing")
        data = pipe.read()
    os.waitpid(pid, 0)
    archive = np.load(io.BytesIO(data))
    return [(str(archive["note"]), archive["result"])]


MECHANISMS = {"pool": via_pool, "executor": via_executor, "os_fork": via_os_fork}


def main(workload, mechanism, out_path):
    global _compute
    _compute = make_workload(workload)
    parent = _compute()  # multi-threaded: the parent now holds an OpenMP team
    try:
        children = MECHANISMS[mechanism](multiprocessing.get_context("fork"))
    except (multiprocessing.TimeoutError, concurrent.futures.TimeoutError) as exc:
        print(f"a forked child hung: {exc!r}", file=sys.stderr)
        sys.stdout.flush()
        os._exit(HUNG)  # without joining the hung children
    np.savez(out_path, parent=parent, parent_note=_config.config()["fork"],
             notes=np.array([note for note, _ in children]),
             results=np.stack([result for _, result in children]))


if __name__ == "__main__":
    main(*sys.argv[1:])
