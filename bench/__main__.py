"""``python -m bench``: every workload on ember and on torch, one process per framework.

Prints a markdown table (median time, ember/torch ratio, final loss) and writes it to
bench/RESULTS.md with the date and the machine. Pass substrings to run a subset.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def import_time(module: str, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True, cwd=ROOT)
        times.append(time.perf_counter() - t0)
    base = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True, cwd=ROOT)
        base.append(time.perf_counter() - t0)
    return statistics.median(times) - statistics.median(base)


def run(fw: str, wanted: list) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.run_one", fw, *wanted], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return {}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def main() -> None:
    wanted = sys.argv[1:]
    rows = []
    if not wanted or any(w in "import" for w in wanted):
        te, tt = import_time("ember"), import_time("torch")
        rows.append(("import", te, tt, None, None))
    ember_res, torch_res = run("ember", wanted), run("torch", wanted)
    for name in torch_res.keys() | ember_res.keys():
        e, t = ember_res.get(name, {}), torch_res.get(name, {})
        rows.append((name, e.get("median_s"), t.get("median_s"),
                     e.get("loss") if "error" not in e else e["error"], t.get("loss")))
    order = {n: i for i, n in enumerate(["import"] + list(torch_res) + list(ember_res))}
    rows.sort(key=lambda r: order.get(r[0], 99))
    lines = ["| workload | ember | torch | ember/torch | ember loss | torch loss |",
             "|---|---|---|---|---|---|"]
    for name, e, t, le, lt in rows:
        ratio = f"{e / t:.2f}x" if e and t else "—"
        loss_e = f"{le:.4f}" if isinstance(le, float) else (le or "")
        loss_t = f"{lt:.4f}" if isinstance(lt, float) else ""
        lines.append(f"| {name} | {fmt_time(e) if e else 'n/a'} | {fmt_time(t) if t else 'n/a'} "
                     f"| {ratio} | {loss_e} | {loss_t} |")
    table = "\n".join(lines)
    print(table)
    header = (f"# Benchmark results\n\n{datetime.date.today()} on {platform.machine()}, "
              f"{os.cpu_count()} cores, Python {platform.python_version()}, "
              f"`python -m bench` (median per step; same process per framework).\n\n")
    if not wanted:
        path = os.path.join(HERE, "RESULTS.md")
        gpu = ""  # the GPU section comes from `python -m bench.gpu` on another machine: keep it
        if os.path.exists(path):
            with open(path) as f:
                old = f.read()
            if "\n## GPU" in old:
                gpu = "\n" + old[old.index("\n## GPU") + 1:]
        with open(path, "w") as f:
            f.write(header + table + "\n" + gpu)


if __name__ == "__main__":
    main()
