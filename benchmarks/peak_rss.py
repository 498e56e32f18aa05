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


def tensor_peak_bytes(fn) -> int:
    """Peak of the bytes held by CPU tensors allocated while ``fn()`` runs, above those held when
    it starts, from torch.profiler's allocation events in time order. Unlike RSS it does not
    depend on what the C allocator keeps or returns, so it is the same from run to run: it shows
    what a step keeps alive."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type().name == "CPU")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak
