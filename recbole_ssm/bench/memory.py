"""Memory as the benchmarks measure it: /proc/PID/status fields, a code region's own peak RSS."""

from __future__ import annotations


def status_kib(field_name: str, pid: int | str = "self") -> int | None:
    """A memory field of /proc/PID/status (VmRSS, VmHWM, ...) in KiB; None where there is none."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc), so a region's new allocations show in RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class CpuPeakMemory:
    """Peak resident memory of a code region above the resident memory when it started (MiB).

    On Linux the kernel's peak-RSS mark (VmHWM) is reset through ``/proc/self/clear_refs``
    before the region (after returning freed heap memory to the OS with ``malloc_trim``), so
    the peak is the region's own; where that is not possible, the
    process peak (``getrusage`` ru_maxrss) is used, which can only overstate the baseline and
    thus understate the region (``method`` says which was used).
    """

    def __init__(self) -> None:
        self.method = "VmHWM reset"
        self.baseline_kib = 0
        self.peak_kib = 0

    def __enter__(self) -> CpuPeakMemory:
        _malloc_trim()
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")
        except OSError:
            self.method = "ru_maxrss"
        self.baseline_kib = status_kib("VmRSS") or 0
        return self

    def __exit__(self, *exc) -> None:
        if self.method == "VmHWM reset":
            self.peak_kib = status_kib("VmHWM") or 0
        else:
            import resource

            self.peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @property
    def mib(self) -> float:
        return max(0, self.peak_kib - self.baseline_kib) / 1024.0


def process_peak_rss_mib() -> float:
    """Peak resident memory of this process since it started (MiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
