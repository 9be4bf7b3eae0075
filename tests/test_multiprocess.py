"""Multi-process runs: two processes on localhost (4 CPU devices each, gloo collectives, one
global mesh of 8) against the one-process run of the same config on this session's 8 devices."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxdistill import distributed
from jaxdistill.recipes import mixture_config
from jaxdistill.train import Checkpointer
from jaxdistill.train.program import build_run, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "mixture_sid.py") + ":tiny"
MESH = (4, 2, 1)  # data over both processes, fsdp-sharded MLP weights: cross-process collectives either way
OVERRIDES = {"steps": 6, "checkpoint_every": 3, "sample_every": 6, "sample_count": 64, "eval_samples": 16}


def _config():
    config = mixture_config("sid", "tiny")
    config.mesh.shape = MESH
    config.train.update(OVERRIDES)
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _two_processes(workdir):
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    args = [f"--config={CONFIG}", f"--workdir={workdir}", f"--config.mesh.shape={MESH}",
            *(f"--config.train.{k}={v}" for k, v in OVERRIDES.items()),
            f"--coordinator_address=localhost:{port}", "--num_processes=2"]
    procs = [subprocess.Popen([sys.executable, "-m", "jaxdistill.cli", "train", *args, f"--process_id={i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-2000:]}\n{err[-3000:]}"
    return [out for out, _ in outs]


def _state(workdir, step):
    run = build_run(_config())
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [3, 6]
        run.distiller.restore(ckpt, step)
    return jax.device_get(run.distiller.state)


def test_two_processes_train_the_parameters_of_one_process(tmp_path):
    outs = _two_processes(tmp_path / "two")
    # (gloo's C++ connection messages also reach stdout, from several threads, in both processes)
    for text in ("compiled the train step", "step 6/6", "final:"):
        assert text in outs[0] and text not in outs[1], f"process 0 alone prints the run's output ({text!r})"
    assert os.listdir(tmp_path / "two" / "samples") == ["samples_0000006.png"]
    reference = _config()  # its states are the check: no pictures, no end-of-train evaluation
    reference.train.update(sample_every=0, eval_samples=0)
    train(reference, str(tmp_path / "one"), print_fn=lambda *_: None)
    for step in (3, 6):  # the two-process checkpoint restores in this single process, on its own mesh
        two, one = _state(tmp_path / "two", step), _state(tmp_path / "one", step)
        assert int(two.step) == int(one.step) == step
        np.testing.assert_array_equal(two.key, one.key)
        for name in ("gen", "critic", "ema", "gen_opt", "critic_opt"):
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name),
                         getattr(two, name), getattr(one, name))


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"SLURM_NTASKS": "1"}, None),
    ({"SLURM_NTASKS": "16"}, "SLURM"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "Open MPI"),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, None),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, "Cloud TPU (multi-host)"),
    ({"TPU_WORKER_HOSTNAMES": "WARNING: could not determine TPU worker hostnames or IP addresses, please set"}, None),
])
def test_which_environments_start_a_multi_process_run(env, expected):
    assert distributed.cluster_described(env) == expected
    if expected is None:
        assert distributed.initialize("auto", env=env) == "one process"


@pytest.mark.parametrize("kwargs,message", [
    (dict(mode="sometimes"), r"--distributed='sometimes' is not a mode; use one of \('auto', 'on', 'off'\)"),
    (dict(coordinator_address="localhost:1234"), "but not --num_processes"),
    (dict(coordinator_address="localhost:1234", num_processes=2, process_id=2), r"process_id=2 must be in \[0, 2\)"),
    (dict(env={"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}),
     "num_processes='two' is not an integer"),
])
def test_bad_distributed_settings_name_the_value(kwargs, message):
    kwargs.setdefault("env", {})
    with pytest.raises(ValueError, match=message):
        distributed.initialize(**kwargs)


@pytest.mark.heavy  # ~50 s; the parity test above keeps the two-process path in `make test`
def test_sigterm_to_one_process_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
    """JAX's preemption service: a SIGTERM seen by any process stops every process after one
    agreed step, and the checkpoint of that step is written by all of them."""
    workdir = tmp_path / "run"
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    args = [f"--config={CONFIG}", f"--workdir={workdir}", f"--config.mesh.shape={MESH}", "--config.train.steps=100000",
            "--config.train.checkpoint_every=100000", "--config.train.sample_every=0", "--config.train.log_every=10",
            f"--coordinator_address=localhost:{port}", "--num_processes=2"]
    procs = [subprocess.Popen([sys.executable, "-m", "jaxdistill.cli", "train", *args, f"--process_id={i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    try:
        deadline = time.time() + 300
        metrics = workdir / "metrics.jsonl"
        while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.5)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i}:\n{out[-2000:]}\n{err[-3000:]}"
    saved = re.search(r"SIGTERM: saved step (\d+)", outs[0][0])
    assert saved, outs[0][0][-2000:]
    step = int(saved.group(1))
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        assert ckpt.all_steps() == [step] and 20 < step < 100000
