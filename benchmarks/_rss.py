"""Peak resident memory of the current process, for benchmarks that measure it in a child process."""

from __future__ import annotations

import resource


def peak_rss_gib() -> float:
    """This process's peak resident set size since it was started, in GiB.

    Read from Linux's `VmHWM` (the high-water mark of this process's own address space), not from
    `getrusage().ru_maxrss`: the kernel carries ru_maxrss across exec, so a child started by `subprocess`
    reports at least the parent's resident size at the fork (a child decoding 2048² reported the benchmark
    parent's 3.2 GiB instead of its own 2.2-2.4 GiB). Falls back to ru_maxrss where /proc is missing.
    """
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 2**20  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
