"""Smoke tests of the benchmark engine (gncpu.bench): its logic, on tiny
shapes with fake peers. No timing assertions: the machine is shared."""
import argparse
import importlib.util
import itertools
import json
import math
import pathlib
import sys

import numpy as np
import pytest

from gncpu import bench, reference
from gncpu.bench.contenders import (CONTENDERS, Case, Contender, Skipped, as_numpy, make_workload,
                                    numpy_group_norm)
from gncpu.bench.report import fmt_ratio, geomean
from gncpu.bench.timing import Failure, ForeignLoad, Stats, measure, quiesce, slot_count

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = bench.Settings(warmup_rounds=1, min_rounds=3, budget=0.0, sample_time=0.0, quiet_limit=0.0,
                      rotate_bytes=1 << 16)
PEERS = ("torch", "onnxruntime", "ort-legacy", "openvino")


def _contender(name):
    return next(c for c in CONTENDERS if c.name == name)


# --- cases and slots -------------------------------------------------------------------

@pytest.mark.parametrize("text, shape, groups", [
    ("1x320x64x64/32", (1, 320, 64, 64), 32),
    (" 2x4x3/2 ", (2, 4, 3), 2),
    ("1x32x4x4x4/1", (1, 32, 4, 4, 4), 1),
])
def test_case_parse(text, shape, groups):
    case = Case.parse(text)
    assert (case.shape, case.groups) == (shape, groups)
    assert case.nbytes == 4 * int(np.prod(shape))
    assert Case.parse(case.label) == case


@pytest.mark.parametrize("text, match", [
    ("1x320x64x64", "NxCxHxW/G"),
    ("1x320/32", "at least one spatial dim"),
    ("axbxc/1", "NxCxHxW/G"),
    ("1x30x8x8/4", "must be positive and divide C=30"),
    ("1x32x8x8/0", "must be positive"),
    ("1x32x0x8/4", "non-positive"),
])
def test_case_parse_rejects(text, match):
    with pytest.raises(ValueError, match=match):
        Case.parse(text)


@pytest.mark.parametrize("per_slot, rotate, cap, expected", [
    (1 << 20, 64 << 20, 1024, 64),
    (3 << 20, 64 << 20, 1024, 22),    # rounds up: the pass must cover the bytes
    (256 << 20, 64 << 20, 1024, 1),   # one slot already dwarfs the cache
    (1024, 64 << 20, 1024, 1024),     # capped
])
def test_slot_count(per_slot, rotate, cap, expected):
    assert slot_count(per_slot, rotate, cap) == expected


def test_workload_slots_differ_and_the_output_is_written():
    work = make_workload(Case.parse("1x8x4x4/2"), 3, offset=100.0, seed=1)
    assert work.slots == 3
    assert not np.array_equal(work.inputs[0], work.inputs[1])
    assert abs(float(work.inputs[0].mean()) - 100.0) < 1.0
    assert work.output.shape == (1, 8, 4, 4) and work.output.dtype == np.float32
    assert np.all(work.output == 1.0)  # pages touched before any timing
    assert work.derived("k", lambda w: [w.slots]) is work.derived("k", lambda w: ["other"])


# --- interleaved measurement ------------------------------------------------------------

def _recording_runners(names, log):
    def make(name):
        def run(slot):
            log.append((name, slot))
        return run
    return {name: make(name) for name in names}


def test_measure_interleaves_every_contender_once_per_round_in_varying_order():
    log = []
    names = ["a", "b", "c", "d"]
    result = measure(_recording_runners(names, log), 5, warmup_rounds=1, min_rounds=30, max_rounds=30,
                     budget=0.0, sample_time=0.0, seed=3)
    timed = log[len(names):]  # after one warm-up call each
    rounds = [timed[i:i + len(names)] for i in range(0, len(timed), len(names))]
    assert len(rounds) == 30
    assert all(sorted(name for name, _ in r) == names for r in rounds)
    assert len({tuple(name for name, _ in r) for r in rounds}) > 1, "the order must change between rounds"
    for name in names:
        stats = result[name]
        assert isinstance(stats, Stats)
        assert stats.samples == 30 and stats.inner == 1
        assert stats.minimum <= stats.q1 <= stats.median <= stats.q3


def test_measure_rotates_through_all_slots_without_immediate_reuse():
    log = []
    measure(_recording_runners(["a", "b"], log), 7, warmup_rounds=1, min_rounds=20, max_rounds=20,
            budget=0.0, sample_time=0.0)
    slots = [slot for _, slot in log]
    assert set(slots) == set(range(7))
    assert all(b == (a + 1) % 7 for a, b in zip(slots, slots[1:])), "consecutive calls take consecutive slots"


def test_measure_batches_fast_calls_into_samples():
    result = measure({"fast": lambda slot: None}, 1, warmup_rounds=5, min_rounds=3, max_rounds=3,
                     budget=0.0, sample_time=1e-3)
    assert result["fast"].inner > 1


def test_measure_reports_a_failing_contender_and_keeps_the_others():
    calls = {"n": 0}

    def flaky(slot):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("peer crashed")

    result = measure({"ok": lambda slot: None, "flaky": flaky, "broken": lambda slot: 1 / 0}, 2,
                     warmup_rounds=1, min_rounds=10, max_rounds=10, budget=0.0, sample_time=0.0)
    assert isinstance(result["ok"], Stats) and result["ok"].samples == 10
    assert isinstance(result["flaky"], Failure) and "peer crashed" in result["flaky"].error
    assert isinstance(result["broken"], Failure) and "ZeroDivisionError" in result["broken"].error
    assert list(result) == ["ok", "flaky", "broken"]


@pytest.mark.parametrize("kwargs, match", [
    ({"min_rounds": 0}, "min_rounds"),
    ({"min_rounds": 5, "max_rounds": 4}, "min_rounds"),
])
def test_measure_rejects_bad_round_counts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure({"a": lambda s: None}, 1, **kwargs)


def test_stats_drop_descheduled_samples_and_take_the_lowest_block_median():
    # 12 samples of 1 ms at full CPU share, 3 of them descheduled (10 ms wall,
    # 1 ms CPU); the third block is uniformly slower (2 ms, undisturbed).
    wall = [1e-3] * 4 + [1e-3, 10e-3, 1e-3, 10e-3] + [2e-3] * 3 + [10e-3]
    cpu = [1e-3] * 4 + [1e-3, 1e-3, 1e-3, 1e-3] + [2e-3] * 3 + [1e-3]
    stats = Stats.from_samples(wall, 1, cpu)
    assert stats.samples == 12 and stats.kept == 9
    assert stats.median == pytest.approx(1e-3) and stats.minimum == pytest.approx(1e-3)
    assert stats.minimum <= stats.q1 <= stats.median <= stats.q3
    plain = Stats.from_samples(wall, 1)  # without CPU times nothing is dropped
    assert plain.kept == 12 and plain.median == pytest.approx(1e-3)


def test_a_contender_per_kernel_variant_gives_the_oracle_or_is_skipped():
    from gncpu.bench.contenders import variant_contenders
    from gncpu.kernel import LEVELS, available_variants

    work = make_workload(Case.parse("2x32x7x7/8"), 2, seed=6)
    built = dict(available_variants())
    contenders = variant_contenders()
    assert [c.name for c in contenders] == [f"gncpu-{level}" for level in LEVELS]
    for contender in contenders:
        level = contender.name.split("-", 1)[1]
        if level not in built:
            with pytest.raises(Skipped, match=level):
                contender.prepare(work, 1)
            continue
        run = contender.prepare(work, 2)
        np.testing.assert_allclose(run(1), reference.group_norm(work.inputs[1], 8, work.weight, work.bias),
                                   atol=2e-5)


def test_quiesce_waits_while_the_process_burns_cpu_up_to_the_limit():
    busy = itertools.count(0.0, 0.01)  # 10 ms more CPU at every reading: a thread is spinning
    waited = quiesce(0.004, poll=1e-4, cpu_clock=lambda: next(busy))
    assert waited >= 0.004
    idle = quiesce(1.0, poll=1e-4, cpu_clock=lambda: 0.0)
    assert idle < 0.5


def test_foreign_load_is_a_fraction():
    meter = ForeignLoad().start()
    sum(range(100_000))
    load = meter.stop()
    assert load is None or 0.0 <= load <= 1.0


# --- contenders --------------------------------------------------------------------------

def test_numpy_group_norm_matches_the_oracle():
    work = make_workload(Case.parse("2x12x5x3/3"), 1, seed=2)
    x = work.inputs[0]
    out, scratch = np.empty_like(x), np.empty_like(x)
    y = numpy_group_norm(x, 3, work.weight, work.bias, 1e-5, out, scratch)
    assert y is out
    np.testing.assert_allclose(y, reference.group_norm(x, 3, work.weight, work.bias), atol=2e-5)


@pytest.mark.parametrize("name", ["floor", "gncpu", "gncpu-alloc", "numpy"])
@pytest.mark.parametrize("threads", [1, 2])
def test_builtin_contenders_run_on_every_slot(name, threads):
    work = make_workload(Case.parse("1x16x8x8/4"), 3, seed=4)
    run = _contender(name).prepare(work, threads)
    for slot in range(3):
        y = np.asarray(run(slot))
        expected = work.inputs[slot] if name == "floor" else reference.group_norm(
            work.inputs[slot], 4, work.weight, work.bias)
        np.testing.assert_allclose(y, expected, atol=2e-5)


@pytest.mark.parametrize("name", PEERS)
def test_peer_runs_or_is_skipped_with_a_reason(name):
    """Installed peers must agree with the oracle; missing ones must say how to get them."""
    work = make_workload(Case.parse("1x16x8x8/4"), 2, seed=5)
    try:
        run = _contender(name).prepare(work, 1)
    except Skipped as skip:
        assert "not installed" in skip.reason or "failed to import" in skip.reason
        return
    y = as_numpy(run(1))
    np.testing.assert_allclose(y, reference.group_norm(work.inputs[1], 4, work.weight, work.bias), atol=1e-4)


@pytest.mark.parametrize("name, module", [("torch", "torch"), ("onnxruntime", "onnxruntime"),
                                          ("openvino", "openvino")])
def test_missing_peer_is_skipped_not_an_error(monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    work = make_workload(Case.parse("1x8x4x4/2"), 1)
    with pytest.raises(Skipped, match=f"{module} is not installed"):
        _contender(name).prepare(work, 1)


# --- the suite and its report ---------------------------------------------------------------

def _fake_peer(error):
    """A peer whose output is the oracle's plus `error` (to see the accuracy check work)."""
    def prepare(work, threads):
        expected = [reference.group_norm(x, work.case.groups, work.weight, work.bias).astype(np.float32)
                    for x in work.inputs]

        def run(slot):
            return expected[slot] + np.float32(error)
        return run
    return prepare


def _not_here(work, threads):
    raise Skipped("fakepeer is not installed")


def _broken(work, threads):
    raise RuntimeError("cannot build the model")


def _nan_peer(work, threads):
    def run(slot):
        y = np.zeros(work.case.shape, np.float32)
        y.flat[:5] = np.nan
        return y
    return run


FAKES = [_contender("floor"), _contender("gncpu"), _contender("gncpu-alloc"), _contender("numpy"),
         Contender("fake", "fake peer", _fake_peer(1e-3), note="oracle + 1e-3"),
         Contender("absent", "absent peer", _not_here),
         Contender("broken", "broken peer", _broken),
         Contender("nans", "NaN peer", _nan_peer)]


@pytest.fixture(scope="module")
def suite_data():
    cases = bench.parse_cases(["1x32x8x8/8,1x16x8x8/4"])
    runs = bench.run_suite(cases, FAKES, [1, 2], FAST)
    data = {"suite": "group_norm", "command": "test", "settings": vars(FAST).copy(),
            "contenders": [{"name": c.name, "label": c.label, "computes": c.computes, "note": c.note}
                           for c in FAKES],
            "runs": runs, "environment": bench.environment()}
    return json.loads(json.dumps(data, default=str))  # exactly what the JSON file holds


def test_run_suite_records_status_timing_and_accuracy(suite_data):
    runs = suite_data["runs"]
    assert [(r["case"], r["threads"]) for r in runs] == [
        ("1x32x8x8/8", 1), ("1x32x8x8/8", 2), ("1x16x8x8/4", 1), ("1x16x8x8/4", 2)]
    for run in runs:
        res = run["results"]
        for name in ("floor", "gncpu", "gncpu-alloc", "numpy", "fake", "nans"):
            assert res[name]["status"] == "ok"
            assert res[name]["q1_us"] <= res[name]["median_us"] <= res[name]["q3_us"]
            assert res[name]["samples"] >= FAST.min_rounds
        assert "max_abs_error" not in res["floor"]  # nothing to check a copy against
        assert res["gncpu"]["max_abs_error"] < 1e-5
        assert res["fake"]["max_abs_error"] == pytest.approx(1e-3, rel=1e-2)
        assert math.isnan(res["nans"]["max_abs_error"]) and res["nans"]["nonfinite"] == 5
        assert res["absent"] == {"status": "skipped", "reason": "fakepeer is not installed"}
        assert res["broken"]["status"] == "failed" and "cannot build the model" in res["broken"]["reason"]


def test_report_states_skips_errors_and_ratios(suite_data):
    text = bench.group_norm_report(suite_data)
    assert "**absent peer** skipped (everywhere): fakepeer is not installed" in text
    assert "**broken peer** failed (everywhere)" in text
    assert "1.0e-03" in text and "nan (5 non-finite)" in text
    assert "## 2 threads" in text and "## 1 thread" in text and "2-thread vs 1-thread" in text
    assert "whole-call median of gncpu.group_norm on 1x32x8x8/8" in text
    lookup = bench.Lookup(suite_data)
    ratio = lookup.ratio("1x16x8x8/4", 2, "numpy", "gncpu")
    assert f"| 1x16x8x8/4 | {fmt_ratio(ratio)} |" in text


def _synthetic(times_us):
    """A run dict with given median times {(case, threads, name): µs}."""
    names = sorted({k[2] for k in times_us}, key=["floor", "gncpu", "torch", "onnxruntime"].index)
    runs = {}
    for (case, threads, name), us in times_us.items():
        run = runs.setdefault((case, threads), {"case": case, "threads": threads, "mib": 5.0, "slots": 1,
                                                "shape": [], "groups": 1, "results": {}})
        run["results"][name] = {"status": "ok", "median_us": us, "q1_us": us, "q3_us": us, "min_us": us,
                                "spread": 0.0, "samples": 1, "inner": 1}
    return {"suite": "group_norm", "command": "test", "settings": vars(FAST).copy(),
            "contenders": [{"name": n, "label": n, "computes": None if n == "floor" else "group_norm",
                            "note": ""} for n in names],
            "runs": list(runs.values()), "environment": bench.environment()}


def test_targets_are_computed_from_the_same_run():
    sd1, sd2 = bench.SD_SHAPES[:2]
    data = _synthetic({
        (sd1, 2, "floor"): 10, (sd1, 2, "gncpu"): 12, (sd1, 2, "torch"): 36, (sd1, 2, "onnxruntime"): 240,
        (sd2, 2, "floor"): 10, (sd2, 2, "gncpu"): 15, (sd2, 2, "torch"): 30, (sd2, 2, "onnxruntime"): 150,
        (sd1, 1, "floor"): 20, (sd1, 1, "gncpu"): 24, (sd1, 1, "torch"): 50, (sd1, 1, "onnxruntime"): 300,
        (bench.ONE_GROUP_SHAPE, 1, "gncpu"): 90, (bench.ONE_GROUP_SHAPE, 2, "gncpu"): 50,
        (bench.ONE_GROUP_SHAPE, 1, "floor"): 40, (bench.ONE_GROUP_SHAPE, 2, "floor"): 25,
    })
    text = bench.group_norm_report(data)
    assert f"geomean over the cache-resident SD shapes ({sd1}, {sd2}), 2 threads: " \
           f"**{fmt_ratio(geomean([1.2, 1.5]))}**" in text
    assert f"gncpu speedup vs torch, geomean over 2 shapes, 2 threads (min 2.00, max 3.00): " \
           f"**{fmt_ratio(geomean([3.0, 2.0]))}**" in text
    assert "vs onnxruntime, geomean over 2 shapes, 2 threads (min 10.00, max 20.00)" in text
    assert f"{bench.ONE_GROUP_SHAPE} 1.80" in text


# --- the command line -------------------------------------------------------------------------

def test_add_bench_command_registers_the_subcommand():
    parser = argparse.ArgumentParser(prog="python -m gncpu")
    sub = parser.add_subparsers(dest="command", required=True)
    bench.add_bench_command(sub)
    args = parser.parse_args(["bench", "--threads", "1", "2", "--quick", "--offset", "1e4", "--plot"])
    assert args.fn is not None and args.threads == [1, 2] and args.quick and args.offset == 1e4 and args.plot


def test_main_writes_markdown_and_json(tmp_path, capsys):
    code = bench.main(["--quick", "--threads", "1", "--shapes", "1x8x4x4/2", "--only", "floor,gncpu,numpy",
                       "--budget", "0", "--min-rounds", "2", "--out", str(tmp_path)])
    assert code == 0
    text = (tmp_path / "group_norm.md").read_text()
    assert text in capsys.readouterr().out
    data = json.loads((tmp_path / "group_norm.json").read_text())
    assert [c["name"] for c in data["contenders"]] == ["floor", "gncpu", "numpy"]
    assert data["runs"][0]["results"]["gncpu"]["status"] == "ok"
    assert "threadpools" in data["environment"] and "OPENBLAS_CORETYPE" in data["environment"]["variables"]


@pytest.mark.parametrize("argv, match", [
    (["--only", "gncpu,nosuch"], "unknown contender"),
    (["--shapes", "1x30x8x8/4"], "must be positive and divide C=30"),
    (["--threads", "0"], "--threads must be positive"),
    (["--only", "gncpu", "--skip", "gncpu"], "no contender left"),
])
def test_main_rejects_bad_options_with_a_message(tmp_path, capsys, argv, match):
    assert bench.main(argv + ["--out", str(tmp_path)]) == 2
    assert match in capsys.readouterr().err


def test_plot_writes_a_png_or_explains_what_is_missing(suite_data, tmp_path):
    path = tmp_path / "chart.png"
    if importlib.util.find_spec("matplotlib") is None:
        with pytest.raises(RuntimeError, match="--plot needs matplotlib"):
            bench.group_norm_plot(suite_data, str(path))
    else:
        bench.group_norm_plot(suite_data, str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it(suite_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match=r"--plot needs matplotlib: pip install matplotlib"):
        bench.group_norm_plot(suite_data, str(tmp_path / "chart.png"))


# --- the epilogue suite (bench/bench_epilogues.py) ------------------------------------------

@pytest.fixture(scope="module")
def epilogues():
    spec = importlib.util.spec_from_file_location("bench_epilogues", ROOT / "bench" / "bench_epilogues.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_numpy_silu_matches_the_oracle(epilogues):
    y = np.linspace(-30, 30, 1001, dtype=np.float32)
    expected = reference.apply_activation(y, "silu")
    np.testing.assert_allclose(epilogues.numpy_silu_(y.copy(), np.empty_like(y)), expected, atol=1e-5)


def test_epilogue_suite_runs_or_reports_unavailable_features(epilogues, tmp_path):
    gncpu_only = [c for c in epilogues.EPILOGUE_CONTENDERS if not c.name.startswith("torch")]
    runs = bench.run_suite([Case.parse("1x16x4x4/4")], gncpu_only, [1], FAST)
    results = runs[0]["results"]
    for name, entry in results.items():
        if entry["status"] == "skipped":
            assert entry["reason"].startswith("not available in this build"), (name, entry)
        else:
            assert entry["status"] == "ok", (name, entry)
            if name != "floor":
                assert entry["max_abs_error"] < 1e-5, name
    assert results["gncpu+numpy-silu"]["status"] == "ok"
    assert results["gncpu-strided"]["status"] == "ok" and results["gncpu-strided"]["detail"]
    data = {"suite": "epilogues", "command": "test", "settings": vars(FAST).copy(), "runs": runs,
            "contenders": [{"name": c.name, "label": c.label, "computes": c.computes, "note": c.note}
                           for c in gncpu_only], "environment": bench.environment()}
    text = epilogues.epilogue_report(data)
    assert "## SiLU epilogue (NCHW), 1 thread" in text and "## Layouts, 1 thread" in text
