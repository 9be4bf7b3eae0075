"""`jaxdistill eval --workdir runs/x [--num 2000] [--step N]`.

Metrics of a checkpoint's EMA generator, at every generator step count 1..K; the set depends on
the teacher kind. Analytic mixtures (exact teacher): mode weights against the exact ones (max
relative error), MMD² over its noise floor (two exact sample sets of the same size), and the mean
log-density under the teacher beside that of exact samples — per class for conditional
teachers. Prints the JSON and writes it to `<workdir>/eval/eval_s<step>.json`.
"""

from __future__ import annotations

import json
import os

from absl import flags

from jaxdistill.commands._app import run
from jaxdistill.commands._flags import run_dir_flags
from jaxdistill.train.program import RunError, open_run

def evaluate(workdir: str, *, step: int | None = None, num: int | None = None, print_fn=print) -> dict:
    job = open_run(workdir, step)
    num = num or job.config.train.eval_samples
    if num < 2:
        raise RunError(f"--num={num}: metrics need at least 2 samples.")
    result = {f"k={k}": job.evaluate(num, num_steps=k) for k in range(1, job.distiller.spec.num_steps + 1)}
    path = os.path.join(workdir, "eval", f"eval_s{int(job.distiller.state.step)}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print_fn(json.dumps(result, indent=2))
    print_fn(f"wrote {path}")
    return result


def main() -> None:
    workdir, step = run_dir_flags()
    num = flags.DEFINE_integer("num", None, "samples per evaluation (default: the config's train.eval_samples)")
    run(lambda: evaluate(workdir.value, step=step.value, num=num.value))
