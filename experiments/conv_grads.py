"""The embedded world's SiD-LSG train step on this CPU, with XLA's kernel-gradient convolutions
and with tap-wise kernel gradients (`jaxdistill.models.conv`), side by side in one run.

    python experiments/conv_grads.py [--batch 8] [--steps 6]     # about 4 minutes on 2 cores

Both variants start from the same state and seed; the table gives compile seconds, the median
step time (the first, warm-up step excluded) and the losses after the last step, which should
agree to float32 rounding.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import jax

from jaxdistill.models import conv
from jaxdistill.recipes import world_sid_lsg
from jaxdistill.train.program import build_run


def measure(batch: int, steps: int) -> dict:
    config = world_sid_lsg()
    config.train.batch_size = batch
    run = build_run(config)
    d = run.distiller
    step = d.compile(run.teacher)
    teacher = jax.device_put(run.teacher, d.teacher_sharding(run.teacher))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        d.state, metrics = step(d.state, teacher)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return dict(compile_s=d.compile_seconds, step_s=statistics.median(times[1:]),
                gen_loss=float(metrics["gen_loss"]), critic_loss=float(metrics["critic_loss"]))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=6)
    args = p.parse_args()
    with mock.patch.object(conv, "_takes_tap_grads", lambda *a: False):
        xla = measure(args.batch, args.steps)
    tap = measure(args.batch, args.steps)
    print(f"\nworld SiD-LSG step, batch {args.batch}, {jax.devices()[0].device_kind}, {jax.device_count()} device(s)\n")
    header = f"{'kernel gradients':<24} {'compile s':>9} {'s/step':>7} {'gen_loss':>10} {'critic_loss':>11}"
    print(header)
    print("-" * len(header))
    for name, r in (("XLA convolution", xla), ("tap matmuls", tap)):
        print(f"{name:<24} {r['compile_s']:>9.1f} {r['step_s']:>7.3f} {r['gen_loss']:>10.4f} {r['critic_loss']:>11.4f}")
    print(f"\nspeed-up {xla['step_s'] / tap['step_s']:.2f}x")


if __name__ == "__main__":
    main()
