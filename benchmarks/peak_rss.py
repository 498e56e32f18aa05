"""Peak resident memory of a code section, from /proc (Linux).

ru_maxrss cannot serve: Linux carries it over fork and exec, so a child started by a large
benchmark process inherits its parent's peak. VmHWM belongs to the process's own address space,
and writing 5 to /proc/self/clear_refs resets it to the current RSS.
"""


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> int:
    """Resets the peak to the current RSS; returns the current RSS in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def peak_kb() -> int:
    """Peak RSS in kB since the last reset_peak() (or the process start)."""
    return _status_kb("VmHWM")
