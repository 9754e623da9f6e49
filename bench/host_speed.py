"""The host's own speed over time: a fixed pure-Python loop (no CUDA, no ember) timed every
1.5 s, printed as ``<unix time> <ms>``. Run it beside a benchmark to see which phase of the
device machine's host speed each measurement fell in.

    python -m bench.host_speed 600 > speed.txt &
"""
from __future__ import annotations

import sys
import time


def work() -> float:
    d: dict = {}
    t0 = time.perf_counter()
    for i in range(200000):
        d[i % 1000] = (i, str(i & 7))
    return time.perf_counter() - t0


def main() -> None:
    end = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 60)
    while time.time() < end:
        print(f"{time.time():.1f} {work() * 1e3:.1f}", flush=True)
        time.sleep(1.5)


if __name__ == "__main__":
    main()
