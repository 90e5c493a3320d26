#!/usr/bin/env python3
"""The disk's floor for a durable answer, measured beside the load runs.

Appends 4 KiB records with pwrite + fdatasync for N seconds in DIR, first growing the file (each sync also
writes the inode's new size), then into a zero-filled preallocated file (what the ledger's write path does).
Prints one markdown table row per mode: p50, p99, p99.9 and syncs/s.
Usage: bench/fsync_baseline.py DIR [seconds]
"""
import os
import sys
import time


def run(path, prealloc, seconds, size=4096):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if prealloc:
            chunk = b"\0" * (1 << 20)
            for _ in range(64):
                os.write(fd, chunk)
            os.fsync(fd)
        buf = b"x" * size
        off, lat = 0, []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end and off + size <= (64 << 20):
            t = time.perf_counter()
            os.pwrite(fd, buf, off)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
            off += size
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] * 1e3
    return f"| raw pwrite 4 KiB + fdatasync ({'preallocated' if prealloc else 'growing'} file) | {len(lat) / seconds:,.0f} syncs/s | {q(0.5):.2f} ms | {q(0.99):.2f} ms | {q(0.999):.2f} ms |"


if __name__ == "__main__":
    d = sys.argv[1]
    secs = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    for pre in (False, True):
        print(run(os.path.join(d, f".fsync-baseline-{os.getpid()}"), pre, secs))
