"""What a forked child may do with its parent's OpenMP thread team.

libgomp starts its worker threads at the first parallel region and keeps them
for the next ones. fork() copies only the calling thread, but the child
inherits libgomp's record of the workers: the next parallel region in the
child hands work to threads that do not exist and waits for them forever.
A process that never opened a parallel region has no team yet, so its
children start their own as usual.

So: every multi-threaded kernel call notes that this process holds a team
(`note_team_used`, a global store), and a child forked after that runs gncpu's
kernels on one thread. The results are the same, bit for bit: the kernels'
partition of the work does not depend on the thread count. A later fork of
such a child inherits the unusable team, and the flag with it.

The handler is registered when gncpu is imported; it does nothing else.
"""
import os

_team_used = False       # this process (or the parent it was forked from) opened a parallel region
_forked = False          # this process is a forked child of a process that imported gncpu
_team_unusable = False   # forked after a parallel region: OpenMP would hang, run serially


def note_team_used():
    global _team_used
    _team_used = True


def team_unusable():
    """Whether gncpu's kernels must run on one thread (see the module docstring)."""
    return _team_unusable


def describe():
    """One line for show_config()."""
    if _team_unusable:
        return ("forked child: kernels run on 1 thread (the parent's OpenMP thread team does not "
                "survive fork)")
    if _forked:
        return "forked child: the parent opened no OpenMP team, kernels use threads as usual"
    return "not a forked child"


def _after_fork_in_child():
    global _forked, _team_unusable
    _forked = True
    _team_unusable = _team_used


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork
    os.register_at_fork(after_in_child=_after_fork_in_child)
