"""Paired CPU timings of the four training steps with speed targets (issue: nn CPU speed):
MLP, LeNet-5, the 2-layer LSTM LM and the tiny GPT, ember against torch.

    python -m bench.steps_paired               # all four, 8 rounds each
    python -m bench.steps_paired lstm rounds=12

ember and torch run in two worker processes and take short turns (bench.cpu_pieces'
driver: each turn settles untimed first, then times the step's calls); the medians of the
per-call times are compared, so both sides see the same machine state. The steps are
bench/workloads.py's, the ones `python -m bench` reports.
"""
from __future__ import annotations

import sys
from typing import Any

STEPS = ("MLP 784-256-256-10 SGD step", "LeNet-5 Adam step",
         "LSTM LM step (2x200, vocab 10k, 35x20)", "tiny GPT step (4x128, T64, B16) AdamW")


def cases(fw: Any) -> dict:
    from bench.workloads import WORKLOADS
    out = {}
    for name in STEPS:
        fw.manual_seed(0)
        out[name] = WORKLOADS[name](fw)[0]
    return out


def main() -> None:
    from bench import cpu_pieces
    args = sys.argv[1:]
    if args[:1] == ["worker"]:
        cpu_pieces.worker(args[1], cases)
        return
    n = int(next((a[7:] for a in args if a.startswith("rounds=")), 8))
    words = [a.lower() for a in args if not a.startswith("rounds=")]

    def select(names: list) -> list:
        return [x for x in names if not words or any(w in x.lower() for w in words)]
    # turns of 0.6 s: the LSTM step takes ~0.2 s, so each turn times a few calls
    cpu_pieces.paired("bench.steps_paired", select, lambda _: n, 0.6, width=44)


if __name__ == "__main__":
    main()
