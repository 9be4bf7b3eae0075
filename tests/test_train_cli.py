"""`jaxdistill train` end to end: outputs, exact resume after SIGKILL, SIGTERM, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxdistill.recipes import build_spec, mixture_config
from jaxdistill.teachers import ring_mixture
from jaxdistill.toy import toy_distiller
from jaxdistill.train import Checkpointer
from jaxdistill.train.program import RunError, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mixture_dmd2.py") + ":tiny"
# Subprocesses share a persistent XLA compilation cache: every CLI run here compiles the same
# tiny step, and loading it halves each process's start-up (12.5 s -> 6 s measured).
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    ENV["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla_cache"))


def _cmd(workdir, *overrides):
    return [sys.executable, "-m", "jaxdistill.cli", "train", f"--config={CONFIG}", f"--workdir={workdir}", *overrides]


def _run(workdir, *overrides):
    return subprocess.run(_cmd(workdir, *overrides), capture_output=True, text=True, env=ENV, timeout=300)


def _steps(workdir):
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(p) for p in os.listdir(path) if p.isdigit()) if os.path.isdir(path) else []


def _tiny(**train_overrides):
    config = mixture_config("dmd2", "tiny")
    config.train.update(train_overrides)
    return config


def _final_state(workdir, steps):
    config = mixture_config("dmd2", "tiny")
    d = toy_distiller(ring_mixture(num_modes=4, radius=2.0, std=0.5), build_spec(config), batch_size=16, hidden=32,
                      depth=2, seed=0)
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.latest_step() == steps
        d.restore(ckpt)
    s = jax.device_get(d.state)
    return {"gen": s.gen, "critic": s.critic, "ema": s.ema}


def test_tiny_run_writes_checkpoints_metrics_and_config(tmp_path):
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "final:" in r.stdout and "compiled the train step" in r.stdout
    assert _steps(tmp_path)[-1] == 8
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [row["step"] for row in rows] == list(range(1, 9))
    assert all(np.isfinite(row["gen_loss"]) and row["samples_per_s"] > 0 for row in rows)
    assert json.load(open(tmp_path / "config.json"))["method"]["name"] == "dmd2"


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    steps, overrides = 12, ("--config.train.steps=12", "--config.train.checkpoint_every=1")
    straight = tmp_path / "straight"
    # The uninterrupted reference runs in-process: the same program the CLI runs.
    train(_tiny(steps=steps, checkpoint_every=1), str(straight), print_fn=lambda *_: None)
    reference = _final_state(straight, steps)
    rng = np.random.default_rng(0)
    for kill_after in sorted(rng.choice(np.arange(2, 10), size=2, replace=False)):
        workdir = tmp_path / f"killed_{kill_after}"
        proc = subprocess.Popen(_cmd(workdir, *overrides), env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 240
        while (not _steps(workdir) or _steps(workdir)[-1] < kill_after) and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = _steps(workdir)[-1]
        assert killed_at < steps, "the run finished before it could be killed"
        r = _run(workdir, *overrides)
        assert r.returncode == 0 and f"resumed from step {killed_at}" in r.stdout, r.stderr[-2000:]
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     _final_state(workdir, steps), reference)


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path, "--config.train.steps=100000", "--config.train.checkpoint_every=1000"),
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not os.path.exists(tmp_path / "metrics.jsonl") and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM: saved step" in out
    saved = int(out.split("SIGTERM: saved step ")[1].split()[0])
    assert _steps(tmp_path) == [saved] and 0 < saved < 100000


@pytest.mark.parametrize(
    "override, needle",
    [("--config.train.nonexistent=1", "nonexistent"), ("--config.train.steps=many", "steps")],
)
def test_bad_config_values_fail_with_a_message(tmp_path, override, needle):
    r = _run(tmp_path, override)
    assert r.returncode != 0 and needle in r.stderr
    assert not _steps(tmp_path)


def test_incompatible_workdir_is_refused_and_left_untouched(tmp_path):
    train(_tiny(steps=2), str(tmp_path), print_fn=lambda *_: None)
    before = {p: os.path.getmtime(tmp_path / "checkpoints" / p) for p in os.listdir(tmp_path / "checkpoints")}
    other = _tiny(steps=2)
    other.model.hidden = 64
    with pytest.raises(RunError, match=r"different `model` section.*new --workdir"):
        train(other, str(tmp_path), print_fn=lambda *_: None)
    after = {p: os.path.getmtime(tmp_path / "checkpoints" / p) for p in os.listdir(tmp_path / "checkpoints")}
    assert before == after


def test_run_errors_exit_2_with_the_message(tmp_path):
    r = _run(tmp_path, "--config.teacher.kind=sd15")
    assert r.returncode == 2
    assert "teacher.kind='sd15' is not available yet" in r.stderr
    assert not _steps(tmp_path)
