"""Run a command and sample its process tree's memory from /proc.

RSS counts memory-mapped checkpoint pages that the kernel can drop at will;
RssAnon is the memory that really has to fit. Both are reported.
"""

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import List


@dataclass
class Measurement:
    seconds: float
    peak_rss: int  # bytes, summed over the process tree at the sampled peak
    peak_anon: int
    returncode: int
    stderr_tail: str


def _children(pid: int) -> List[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
    except OSError:
        pass
    return found


def _memory(pid: int):
    rss = anon = 0
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, anon


def measure(command: List[str], env=None, interval: float = 0.02) -> Measurement:
    log = tempfile.TemporaryFile()  # a pipe could fill up with progress bars and block
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)
    peak_rss = peak_anon = 0
    while process.poll() is None:
        tree, pending = [], [process.pid]
        while pending:
            pid = pending.pop()
            tree.append(pid)
            pending += _children(pid)
        samples = [_memory(pid) for pid in tree]
        peak_rss = max(peak_rss, sum(s[0] for s in samples))
        peak_anon = max(peak_anon, sum(s[1] for s in samples))
        time.sleep(interval)
    seconds = time.perf_counter() - start
    log.seek(0)
    stderr = log.read().decode(errors="replace")
    return Measurement(seconds, peak_rss, peak_anon, process.returncode,
                       stderr[-2000:])
