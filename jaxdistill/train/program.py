"""The training program behind `jaxdistill train`: build, resume, loop, log, checkpoint, stop.

    workdir/
      checkpoints/<step>/{state,config}   orbax; the latest complete one is resumed automatically
      config.json                         the resolved config of the run
      metrics.jsonl                       one JSON line per logged step

SIGTERM/SIGINT finish the current step, save a checkpoint and return. Losses that stay
non-finite for `train.max_nonfinite_steps` consecutive steps stop the run with an error naming
the step; the last good checkpoint is left as it is.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdistill.eval.mixture_metrics import evaluate
from jaxdistill.recipes import STATE_DEFINING, build_spec
from jaxdistill.teachers import ring_mixture
from jaxdistill.toy import toy_distiller
from jaxdistill.train.checkpoint import Checkpointer
from jaxdistill.train.sharding import make_mesh


class RunError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


def build_teacher(teacher: ml_collections.ConfigDict):
    if teacher.kind != "mixture":
        raise RunError(f"teacher.kind={teacher.kind!r} is not available yet; this build distils 'mixture' teachers.")
    return ring_mixture(num_modes=teacher.num_modes, radius=teacher.radius, std=teacher.std)


def _check_compatible(saved: dict, config: dict, workdir: str) -> None:
    for section in STATE_DEFINING:
        if saved.get(section) != config.get(section):
            raise RunError(
                f"{workdir} holds a run with a different `{section}` section ({saved.get(section)} vs "
                f"{config.get(section)}), so its checkpoints cannot be resumed by this config. Use a new "
                "--workdir, or the config that run was started with."
            )


def _json_config(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json())


class _StopFlag:
    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        self.signal = signal.Signals(signum).name


def train(config: ml_collections.ConfigDict, workdir: str, *, print_fn=print) -> dict:
    """Run (or resume) the distillation described by `config` in `workdir`; returns the final
    evaluation of the EMA generator."""
    resolved = _json_config(config)
    gm = build_teacher(config.teacher)
    spec = build_spec(config)
    shape = tuple(config.mesh.shape)
    mesh = make_mesh(shape, jax.devices()[: int(np.prod(shape))])
    t = config.train
    d = toy_distiller(gm, spec, batch_size=t.batch_size, hidden=config.model.hidden, depth=config.model.depth,
                      seed=t.seed, mesh=mesh)
    os.makedirs(workdir, exist_ok=True)
    with Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.keep) as ckpt:
        if ckpt.latest_step() is not None:
            _check_compatible(ckpt.restore_config(), resolved, workdir)
            d.restore(ckpt)
            print_fn(f"resumed from step {int(d.state.step)} in {ckpt.directory}")
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(resolved, f, indent=2)
        step_fn = d.compile(gm)
        print_fn(f"compiled the train step in {d.compile_seconds:.1f} s; method {spec.name}, mesh {shape}")
        stop = _StopFlag()
        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            _loop(d, gm, step_fn, ckpt, resolved, t, workdir, stop, print_fn)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if stop.signal is None and ckpt.latest_step() != int(d.state.step):
            d.save(ckpt, resolved, force=True)
    result = evaluate(d.sample(jax.random.key(t.seed + 1), jnp.zeros((t.eval_samples,), jnp.int32), gm), gm)
    summary = {"step": int(d.state.step), "max_rel_weight_err": result["max_rel_weight_err"],
               "mmd2_over_floor": result["mmd2"] / result["mmd2_floor"], "mean_log_p": result["mean_log_p"]}
    print_fn("final: " + json.dumps(summary))
    return summary


def _loop(d, gm, step_fn, ckpt, resolved, t, workdir, stop, print_fn):
    teacher = jax.device_put(gm, d.teacher_sharding(gm))
    nonfinite, last_time, last_step = 0, time.perf_counter(), int(d.state.step)
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as log:
        for step in range(int(d.state.step), t.steps):
            d.state, metrics = step_fn(d.state, teacher)
            losses = jax.device_get({k: metrics[k] for k in ("gen_loss", "critic_loss")})
            nonfinite = 0 if all(math.isfinite(float(v)) for v in losses.values()) else nonfinite + 1
            if nonfinite >= t.max_nonfinite_steps:
                raise RunError(
                    f"losses were non-finite for {nonfinite} consecutive steps, the last at step {step + 1} "
                    f"({ {k: float(v) for k, v in losses.items()} }); stopped without saving. The last good "
                    f"checkpoint (step {ckpt.latest_step()}) is kept; lower the learning rates and resume."
                )
            done = step + 1
            if done % t.log_every == 0 or done == t.steps:
                now = time.perf_counter()
                rate = (done - last_step) * t.batch_size / max(now - last_time, 1e-9)
                row = {"step": done, "samples_per_s": rate,
                       **{k: float(v) for k, v in jax.device_get(metrics).items()}}
                log.write(json.dumps(row) + "\n")
                log.flush()
                eta = (t.steps - done) * t.batch_size / max(rate, 1e-9)
                print_fn(f"step {done}/{t.steps}  {rate:,.0f} samples/s  ETA {eta:.0f} s  "
                         f"gen_loss {row['gen_loss']:.4g}  critic_loss {row['critic_loss']:.4g}")
                last_time, last_step = now, done
            if done % t.checkpoint_every == 0:
                d.save(ckpt, resolved)
            if stop.signal is not None:
                if ckpt.latest_step() != done:
                    d.save(ckpt, resolved, force=True)
                ckpt.wait()
                print_fn(f"{stop.signal}: saved step {done} to {ckpt.directory}; resume with the same command")
                return
