"""Resident memory of the current process (now and at its peak), for benchmarks that measure it in child processes."""

from __future__ import annotations

import resource


def _status_gib(field: str) -> float:
    """A memory field of /proc/self/status (kB there), in GiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 2**20


def current_rss_gib() -> float:
    """This process's resident set size now, in GiB (Linux `VmRSS`)."""
    return _status_gib("VmRSS")


def peak_rss_gib() -> float:
    """This process's peak resident set size since it was started, in GiB.

    Read from Linux's `VmHWM` (the high-water mark of this process's own address space), not from
    `getrusage().ru_maxrss`: the kernel carries ru_maxrss across exec, so a child started by `subprocess`
    reports at least the parent's resident size at the fork (a child decoding 2048² reported the benchmark
    parent's 3.2 GiB instead of its own 2.2-2.4 GiB). Falls back to ru_maxrss where /proc is missing.
    """
    try:
        return _status_gib("VmHWM")
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
