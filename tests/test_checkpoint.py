"""Checkpoints: restore onto another mesh, incomplete saves skipped, bad targets (exact resume after
a SIGKILL is tested end to end in test_train_cli.py)."""

import os

import jax
import numpy as np
import pytest

from jaxdistill.teachers import ring_mixture
from jaxdistill.toy import toy_distiller, toy_spec
from jaxdistill.train import Checkpointer, make_mesh

GM = ring_mixture(num_modes=4, radius=2.0, std=0.5)
SPEC = toy_spec("dmd2", n_critic=2)  # generator first, discriminator-free, AdamW + clipping
KW = dict(hidden=32, depth=2, batch_size=16, seed=3)


def _mesh(shape):
    return make_mesh(shape, jax.devices()[: int(np.prod(shape))])


def _params(d):
    s = jax.device_get(d.state)
    return {"gen": s.gen, "critic": s.critic, "ema": s.ema, "gen_opt": s.gen_opt, "critic_opt": s.critic_opt,
            "step": s.step, "key": s.key}


def _assert_identical(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


# (8,1,1) is heavy: (1,1,1) keeps "restores on another mesh" in `make test`'s time budget.
@pytest.mark.parametrize("target_shape", [(1, 1, 1), pytest.param((8, 1, 1), marks=pytest.mark.heavy)])
def test_checkpoint_from_mesh_2x4_restores_on_another_mesh(tmp_path, target_shape):
    src = toy_distiller(GM, SPEC, mesh=_mesh((2, 4, 1)), **KW)
    src.run(GM, 2)
    with Checkpointer(str(tmp_path)) as ckpt:
        src.save(ckpt)
        ckpt.wait()
        dst = toy_distiller(GM, SPEC, mesh=_mesh(target_shape), **KW)
        dst.restore(ckpt)
    _assert_identical(_params(dst), _params(src))
    kernel = dst.state.gen["layers"][0]["kernel"]
    assert kernel.sharding.mesh.shape == dst.mesh.shape  # placed on the new mesh, as its rules say
    assert len(kernel.sharding.device_set) == int(np.prod(target_shape))


def test_incomplete_save_is_skipped_and_old_steps_are_pruned(tmp_path):
    d = toy_distiller(GM, SPEC, **KW)
    with Checkpointer(str(tmp_path), max_to_keep=2) as ckpt:
        for _ in range(3):
            d.run(GM, 1)
            d.save(ckpt)
            ckpt.wait()
    assert sorted(int(p) for p in os.listdir(tmp_path) if p.isdigit()) == [2, 3]
    # A save killed half-way leaves only orbax's temporary folder behind.
    partial = tmp_path / "4.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "garbage").write_bytes(b"\x00" * 10)
    restored = toy_distiller(GM, SPEC, **KW)
    with Checkpointer(str(tmp_path)) as fresh:
        assert fresh.latest_step() == 3
        restored.restore(fresh)
    assert int(restored.state.step) == 3


def test_restoring_into_a_different_network_names_the_problem(tmp_path):
    d = toy_distiller(GM, SPEC, **KW)
    with Checkpointer(str(tmp_path)) as ckpt:
        d.save(ckpt)
    other = toy_distiller(GM, SPEC, **{**KW, "hidden": 64})
    with Checkpointer(str(tmp_path)) as ckpt, pytest.raises(ValueError, match=(
            r"does not fit this run's state .*gen\.inp\.bias is \(32,\) in the checkpoint, \(64,\) in this run, "
            r".* and \d+ more")):
        other.restore(ckpt)
    deeper = toy_distiller(GM, SPEC, **{**KW, "depth": 3})
    with Checkpointer(str(tmp_path)) as ckpt, pytest.raises(ValueError, match=(
            r"gen\.layers\.1\.bias \(32,\) is not in the checkpoint")):
        deeper.restore(ckpt)
    with Checkpointer(str(tmp_path / "deeper")) as ckpt:
        deeper.save(ckpt)
    with Checkpointer(str(tmp_path / "deeper")) as ckpt, pytest.raises(ValueError, match=(
            r"critic\.net\.layers\.1\.bias \(32,\) is in the checkpoint, not in this run")):
        d.restore(ckpt)
    with Checkpointer(str(tmp_path / "empty")) as ckpt, pytest.raises(FileNotFoundError, match="no complete"):
        other.restore(ckpt)
