"""ember's eager bench.gpu steps alone, for A/B between two trees on one GPU machine.

    PYTHONPATH=treeA python -m bench.eager_ab A GPT-2 ResNet   # run from inside each tree,
    PYTHONPATH=treeB python -m bench.eager_ab B GPT-2 ResNet   # alternating A, B, A, B

Each call builds the named workloads (``GPT-2``: GPT-2 124M B16 bf16 AdamW; ``ResNet``:
ResNet-50 B128 bf16 channels-last SGD), runs 3 warmup steps and prints the median of 15
synchronised steps (``bench.host_step``'s timer), with the label first. Eager steps are
host-bound and the host drifts between machines and minutes, so compare trees only within
one machine, in alternating processes.
"""
from __future__ import annotations

import sys


def main() -> None:
    import ember
    from bench.gpu import gpt2, resnet50
    from bench.host_step import _time
    label, names = sys.argv[1], sys.argv[2:] or ["GPT-2", "ResNet"]
    makers = {"GPT-2": gpt2, "ResNet": resnet50}
    out = []
    for name in names:
        step, _ = makers[name](ember)
        for _ in range(3):
            step()
        ember.cuda.synchronize()
        out.append(f"{name} {_time(ember, step):.1f} ms")
        del step
    print(label, " | ".join(out), flush=True)

if __name__ == "__main__":
    main()
