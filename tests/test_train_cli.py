"""`jaxdistill train` end to end: outputs, exact resume after SIGKILL, SIGTERM, bad input."""

import glob
import json
import os
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from jaxdistill.commands.evaluate import evaluate
from jaxdistill.commands.export import export
from jaxdistill.commands.info import info
from jaxdistill.commands.sample import sample
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


def _tensorboard_tags(workdir):
    """{tag: [steps]} of the run's TensorBoard event files (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2

    tags = {}
    for path in glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*")):
        data, i = open(path, "rb").read(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def _tree_bytes(path):
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


def test_cli_run_then_sample_eval_export_info_and_a_corrupted_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    r = _run(workdir)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "final:" in r.stdout and "compiled the train step" in r.stdout and "ms/step" in r.stdout
    assert _steps(workdir) == [4, 6, 8]  # checkpoint_every=2, keep=3
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert rows[0] == {"step": 0, "time/compile_s": rows[0]["time/compile_s"]} and rows[0]["time/compile_s"] > 0
    assert [row["step"] for row in rows[1:]] == list(range(1, 9))
    assert all(np.isfinite(row["gen_loss"]) and row["samples_per_s"] > 0 and row["time/step_ms"] > 0
               for row in rows[1:])
    assert json.load(open(workdir / "config.json"))["method"]["name"] == "dmd2"
    tags = _tensorboard_tags(workdir)
    assert tags["gen_loss"] == list(range(1, 9)) and tags["samples"] == [4, 8]
    for step in (4, 8):  # sample_every=4
        assert Image.open(workdir / "samples" / f"samples_{step:07d}.png").size == (256, 256)

    # `sample`: grid + one file per seed; a seed's sample does not depend on how many are drawn.
    out = tmp_path / "samples"
    grid = sample(str(workdir), num=6, seed=3, out=str(out), print_fn=lambda *_: None)
    assert Image.open(grid).mode == "RGB"
    six = [np.load(out / "sample_s8_k1" / f"{s:06d}.npy") for s in range(3, 9)]
    sample(str(workdir), num=2, seed=5, out=str(tmp_path / "two"), print_fn=lambda *_: None)
    np.testing.assert_array_equal(np.load(tmp_path / "two" / "sample_s8_k1" / "000005.npy"), six[2])
    with pytest.raises(RunError, match="outside 1..1"):
        sample(str(workdir), num_steps=2, print_fn=lambda *_: None)

    # `eval`: the mixture metrics, written beside the run.
    result = evaluate(str(workdir), num=200, step=6, print_fn=lambda *_: None)
    assert result["k=1"]["step"] == 6 and result["k=1"]["all"]["mmd2_over_floor"] > 0
    assert json.load(open(workdir / "eval" / "eval_s6.json")) == json.loads(json.dumps(result))

    # `export`: PyTorch-layout safetensors of the EMA generator, and never over existing files.
    exported = export(str(workdir), str(tmp_path / "export"), print_fn=lambda *_: None)
    weights = load_file(os.path.join(exported, "generator.safetensors"))
    ema = jax.device_get(_final_state(workdir, 8)["ema"])
    np.testing.assert_array_equal(weights["layers.0.weight"].numpy(), np.asarray(ema["layers"][0]["kernel"]).T)
    assert json.load(open(os.path.join(exported, "config.json")))["step"] == 8
    with pytest.raises(RunError, match="already exists"):
        export(str(workdir), exported, print_fn=lambda *_: None)

    # `info`: the compiled step's FLOPs, memory and collectives from XLA, without training, here
    # with the weights sharded over fsdp.
    lines = []
    config = _tiny()
    config.mesh.shape = (4, 2, 1)
    report = info(config, print_fn=lines.append)
    assert report["step_flops_per_device"] > 0 and report["memory_per_device"]["argument"] > 0
    assert report["collective_bytes_per_device"]["all-reduce"] > 0  # gradients over the data axis
    assert report["memory_per_device"]["peak"] >= report["memory_per_device"]["argument"]
    assert "estimate" not in report  # no chip figures for a CPU
    assert any(line.startswith("collective bytes sent per device: all-reduce") for line in lines)
    assert report["parameters"]["generator"] == sum(np.prod(np.shape(x)) for x in jax.tree.leaves(ema))
    assert any("FLOPs" in line for line in lines) and any("memory per device" in line for line in lines)

    # A corrupted checkpoint: a clear error naming the step and the way out; nothing changes on disk.
    data = max(glob.glob(str(workdir / "checkpoints" / "8" / "state" / "**" / "d" / "*"), recursive=True),
               key=os.path.getsize)
    blob = bytearray(open(data, "rb").read())
    blob[len(blob) // 4: len(blob) // 2] = bytes(len(blob) // 2 - len(blob) // 4)
    open(data, "wb").write(blob)
    before = _tree_bytes(workdir / "checkpoints")
    with pytest.raises(RunError, match=r"checkpoint step 8 .* cannot be read.*resume from step 6"):
        train(_tiny(steps=10), str(workdir), print_fn=lambda *_: None)
    assert _tree_bytes(workdir / "checkpoints") == before


# One kill point in CI's `make test`; three in `make test-all`.
@pytest.mark.parametrize("kills", [1, pytest.param(3, marks=pytest.mark.heavy)])
def test_resume_after_sigkill_is_bit_identical(tmp_path, kills):
    # No pictures and no end-of-train evaluation, in the reference and the killed runs alike: the state is the check.
    quick = dict(steps=12, checkpoint_every=1, sample_every=0, eval_samples=0)
    steps, overrides = quick["steps"], tuple(f"--config.train.{k}={v}" for k, v in quick.items())
    straight = tmp_path / "straight"
    # The uninterrupted reference runs in-process: the same program the CLI runs.
    train(_tiny(**quick), str(straight), print_fn=lambda *_: None)
    reference = _final_state(straight, steps)
    rng = np.random.default_rng(0)
    for kill_after in sorted(rng.choice(np.arange(2, 10), size=kills, replace=False)):
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
    [("--config.train.nonexistent=1", "nonexistent"), ("--config.train.steps=many", "steps"),
     ("--config.train.microbatches=3", "multiple of microbatches × data × fsdp = 3 × 1")],
)
def test_bad_config_values_fail_with_a_message(tmp_path, override, needle):
    r = _run(tmp_path, override)
    assert r.returncode != 0 and needle in r.stderr
    assert not _steps(tmp_path)


def test_eval_samples_zero_skips_the_end_of_train_evaluation(tmp_path):  # what the demo sets: it evaluates itself
    lines = []
    assert train(_tiny(steps=2, eval_samples=0), str(tmp_path), print_fn=lines.append) == {}
    assert lines[-1] == "no end-of-train evaluation (train.eval_samples=0)"
    assert not any(line.startswith("final:") for line in lines)


def test_incompatible_workdir_is_refused_and_left_untouched(tmp_path):
    quick = dict(steps=2, sample_every=0, eval_samples=0)  # the workdir's checks need no pictures or evaluation
    train(_tiny(**quick), str(tmp_path), print_fn=lambda *_: None)
    before = {p: os.path.getmtime(tmp_path / "checkpoints" / p) for p in os.listdir(tmp_path / "checkpoints")}
    other = _tiny(**quick)
    other.model.hidden = 64
    with pytest.raises(RunError, match=r"different `model` section.*new --workdir"):
        train(other, str(tmp_path), print_fn=lambda *_: None)
    after = {p: os.path.getmtime(tmp_path / "checkpoints" / p) for p in os.listdir(tmp_path / "checkpoints")}
    assert before == after


def test_run_errors_exit_2_with_the_message(tmp_path):
    r = _run(tmp_path, "--config.teacher.kind=sd15")
    assert r.returncode == 2
    assert "teacher.kind='sd15' is unknown; expected 'mixture' or 'diffusers'" in r.stderr
    assert not _steps(tmp_path)


def test_missing_teacher_folder_names_the_path_and_the_fix(tmp_path):
    config = _tiny()
    config.teacher = {"kind": "diffusers", "path": str(tmp_path / "no_such_model")}
    with pytest.raises(RunError, match=r"teacher.path=.*no_such_model.* is not a folder.*--config.teacher.path="):
        train(config, str(tmp_path / "run"), print_fn=lambda *_: None)
    assert not os.path.exists(tmp_path / "run")


def test_reading_commands_refuse_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="no config.json"):
        sample(str(tmp_path), print_fn=lambda *_: None)
