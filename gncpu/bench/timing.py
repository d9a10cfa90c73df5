"""Interleaved timing for `python -m gncpu bench`.

Every contender runs once per round, in a freshly shuffled order, so machine
noise (other processes, frequency changes, a neighbour's spinning threads)
lands on all contenders alike instead of on whichever ran during the bad
second. Each call takes its input from the next slot of a pool of buffers
larger than the last-level cache, so a small shape is not timed on data the
previous call left in cache.
"""
import gc
import math
import os
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["Stats", "Failure", "slot_count", "measure", "quiesce", "ForeignLoad"]


# Samples during which this process got less than this share of the CPU
# time its undisturbed samples get (per contender: the 90th percentile of
# CPU time / wall time) were descheduled by other processes: dropped.
UNDISTURBED_SHARE = 0.8
# The kept samples are split, in the order taken, into this many blocks; the
# reported median is the lowest block median (min of medians): a burst of
# load that spans one block moves the result less than the median of all.
BLOCKS = 3


@dataclass(frozen=True)
class Stats:
    """Per-call times in seconds over `samples` samples of `inner` calls each.

    median, q1, q3: of the block of kept samples with the lowest median (see
    BLOCKS); minimum: over all kept samples; kept: samples not dropped as
    descheduled (see UNDISTURBED_SHARE)."""
    median: float
    q1: float
    q3: float
    minimum: float
    samples: int
    inner: int
    kept: int = 0

    @property
    def spread(self):
        """Interquartile range relative to the median (0.1 = 10 %)."""
        return (self.q3 - self.q1) / self.median if self.median > 0 else math.nan

    @classmethod
    def from_samples(cls, seconds, inner, cpu_seconds=None, blocks=BLOCKS):
        """cpu_seconds: this process's CPU time during each sample (None: keep all)."""
        arr = np.asarray(seconds, dtype=np.float64)
        kept = arr
        if cpu_seconds is not None and arr.size >= 2 * blocks:
            share = np.asarray(cpu_seconds, dtype=np.float64) / np.maximum(arr, 1e-12)
            undisturbed = share >= UNDISTURBED_SHARE * np.percentile(share, 90)
            if np.count_nonzero(undisturbed) >= blocks:
                kept = arr[undisturbed]
        parts = [part for part in np.array_split(kept, min(blocks, kept.size)) if part.size]
        best = min(parts, key=np.median)
        q1, median, q3 = np.percentile(best, [25, 50, 75])
        return cls(float(median), float(q1), float(q3), float(kept.min()), int(arr.size), int(inner),
                   int(kept.size))


@dataclass(frozen=True)
class Failure:
    """A contender that raised while being timed: reported, not fatal."""
    error: str


class ForeignLoad:
    """Share of the machine's CPU time that other processes used between
    start() and stop(): a benchmark on a shared machine says how shared it
    was. Linux only (reads /proc/stat); None elsewhere."""

    def __init__(self):
        self._start = None

    @staticmethod
    def _snapshot():
        try:
            with open("/proc/stat") as f:
                # user nice system idle iowait irq softirq steal (guest time
                # is already inside user)
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        own = os.times()
        return sum(fields) / ticks, (sum(fields) - idle) / ticks, own.user + own.system

    def start(self):
        self._start = self._snapshot()
        return self

    def stop(self):
        end = self._snapshot()
        if self._start is None or end is None:
            return None
        total, busy, own = (b - a for a, b in zip(self._start, end))
        if total <= 0:
            return None
        return min(1.0, max(0.0, (busy - own) / total))


def slot_count(bytes_per_slot, rotate_bytes, max_slots=1024):
    """How many input/output buffer slots to rotate through so that one pass
    over them touches at least `rotate_bytes` (e.g. twice the last-level
    cache). One slot when a single one is already that large."""
    if bytes_per_slot <= 0:
        raise ValueError(f"bytes_per_slot={bytes_per_slot} must be positive")
    if max_slots < 1:
        raise ValueError(f"max_slots={max_slots} must be >= 1")
    return int(min(max_slots, max(1, math.ceil(rotate_bytes / bytes_per_slot))))


class _SlotCursor:
    """Hands out slots in order across all contenders: consecutive calls,
    whoever makes them, never reuse a buffer before the pool wraps."""

    def __init__(self, slots):
        self.slots = slots
        self.position = 0

    def take(self, count):
        start = self.position
        self.position = (start + count) % self.slots
        return start


def quiesce(limit, poll=5e-4, busy_fraction=0.1, cpu_clock=time.process_time):
    """Sleep until this process's other threads stop burning CPU, at most
    `limit` seconds; returns the seconds waited.

    After a call, libraries' worker threads spin before they sleep (libgomp
    ~3-4 ms of CPU, onnxruntime's pool 15-20 ms, measured here on 2 cores):
    a spinning pool steals a core from whichever contender runs next.
    "Quiet" = over one `poll` interval the process used less than
    `busy_fraction` of a core."""
    start = time.perf_counter()
    while True:
        cpu0, t0 = cpu_clock(), time.perf_counter()
        time.sleep(poll)
        now = time.perf_counter()
        if cpu_clock() - cpu0 < busy_fraction * (now - t0) or now - start >= limit:
            return now - start


def _timed_sample(run, inner, cursor, cpu_clock=time.process_time):
    """(wall seconds per call, this process's CPU seconds per call)."""
    slots = cursor.slots
    start = cursor.take(inner)
    clock = time.perf_counter
    c0, t0 = cpu_clock(), clock()
    for j in range(inner):
        run((start + j) % slots)
    t1, c1 = clock(), cpu_clock()
    return (t1 - t0) / inner, (c1 - c0) / inner


def _describe(exc):
    return f"{type(exc).__name__}: {exc}".strip()


def measure(runners, slots, *, warmup_rounds=3, min_rounds=10, max_rounds=10_000,
            budget=2.0, sample_time=5e-3, quiet_limit=0.05, seed=0, clock=time.perf_counter):
    """Time each runner in `runners` ({name: run(slot)}) interleaved.

    warmup_rounds: untimed rounds first (also estimate each call's cost).
    Then rounds continue until `budget` seconds have passed and at least
    `min_rounds` were done (at most `max_rounds`). Within a round each
    contender takes one sample of `inner` back-to-back calls, `inner` chosen
    so a sample lasts about `sample_time` (timer resolution and call jitter
    matter less for microsecond calls). After each sample the process waits
    (up to `quiet_limit` seconds; 0: not at all) until the worker threads
    that contender left spinning have gone idle, so they do not slow down
    the next one: see quiesce().

    Samples during which the process was descheduled (its CPU time per wall
    second fell well below that contender's usual) are dropped, and the
    median reported is a min of block medians: see Stats.from_samples.

    Returns {name: Stats or Failure}; a runner that raises is dropped from the
    remaining rounds and reported as a Failure.
    """
    if slots < 1:
        raise ValueError(f"slots={slots} must be >= 1")
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds} and {max_rounds}")
    results = {}
    live = dict(runners)
    cursor = _SlotCursor(slots)
    rng = np.random.default_rng(seed)
    inner = {}

    def guarded(name, fn):
        try:
            return fn()
        except Exception as exc:  # a peer's failure must not end the benchmark
            results[name] = Failure(_describe(exc))
            del live[name]
            return None

    # Warm-up: first calls pay for lazy initialisation (thread pools, JIT
    # plans, page faults of peers' private buffers); the fastest one
    # estimates the per-call cost.
    for name, run in list(live.items()):
        estimates = []
        for _ in range(max(1, warmup_rounds)):
            value = guarded(name, lambda: _timed_sample(run, 1, cursor))
            if value is None:
                break
            estimates.append(value[0])
        if name in live:
            # the fastest warm-up call: a preempted one would make inner too small
            estimate = min(estimates)
            inner[name] = max(1, min(10_000, round(sample_time / max(estimate, 1e-9))))

    samples = {name: [] for name in live}
    cpu = {name: [] for name in live}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection mid-sample would be charged to whoever runs
    try:
        started = clock()
        rounds = 0
        while live and rounds < max_rounds and (rounds < min_rounds or clock() - started < budget):
            order = list(live)
            rng.shuffle(order)
            for name in order:
                if name not in live:
                    continue
                value = guarded(name, lambda: _timed_sample(live[name], inner[name], cursor))
                if value is not None:
                    samples[name].append(value[0])
                    cpu[name].append(value[1])
                if quiet_limit > 0:
                    quiesce(quiet_limit)
            rounds += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    for name in live:
        results[name] = Stats.from_samples(samples[name], inner[name], cpu[name])
    return {name: results[name] for name in runners}
