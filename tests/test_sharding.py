"""The engine on a device mesh: one compile, parameter / optimizer-state shardings that follow
the rules, the same numbers as on one device, and clear errors for shapes that do not fit.

Tiny configs (MLP hidden 32, depth 2, batch 16, 2-D ring mixture) keep this file fast; each
compiled Distiller is built once per module and shared by the tests that read it.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdistill.methods import get_method
from jaxdistill.models import DiscriminatorHead, MLPDenoiser
from jaxdistill.teachers import mixture_problem, ring_mixture
from jaxdistill.train import Distiller, make_mesh

HIDDEN = 32
BATCH = 16
STEPS = 5
GM = ring_mixture()
# A larger learning rate than the methods' defaults so that 5 steps move the parameters far
# more than the comparison tolerance: a sharded step that computed something else would show.
LR = 1e-2


def _spec(method: str):
    over = {"gen_lr": LR, "critic_lr": LR}
    if method in ("dmd2", "fdistill"):
        over["n_critic"] = 2  # 5 by default; 2 keeps the scan but halves the work
    return get_method(method, **over)


def _networks(spec, hidden: int = HIDDEN):
    with nnx.use_eager_sharding(False):
        gen = MLPDenoiser((2,), hidden=hidden, depth=2, rngs=nnx.Rngs(0))
        critic = MLPDenoiser((2,), hidden=hidden, depth=2, rngs=nnx.Rngs(1))
        head = DiscriminatorHead(hidden, hidden=hidden, rngs=nnx.Rngs(2)) if spec.discriminator else None
    return gen, critic, head


def _distiller(method: str, mesh, *, hidden: int = HIDDEN, batch_size: int = BATCH) -> Distiller:
    spec = _spec(method)
    gen, critic, head = _networks(spec, hidden)
    return Distiller(spec, mixture_problem(GM), gen, critic, head, batch_size=batch_size, mesh=mesh, seed=0)


def _norm(spec: P) -> tuple:
    """A PartitionSpec as a tuple without trailing Nones (P('fsdp', None) ≡ P('fsdp'))."""
    t = tuple(spec)
    while t and t[-1] is None:
        t = t[:-1]
    return t


def _adam_states(opt_state) -> list:
    leaves = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
    return [x for x in leaves if isinstance(x, optax.ScaleByAdamState)]


def _specs(tree):
    return jax.tree.map(lambda x: _norm(x.sharding.spec), tree)


class Run:
    """A Distiller compiled and run for STEPS steps, with what was observed along the way."""

    def __init__(self, method: str, mesh):
        self.d = _distiller(method, mesh)
        self.init = jax.device_get(self.d.state)  # host copy: the device state is donated
        self.init_specs = _specs(self.d.state)
        c1 = self.d.compile(GM)
        c2 = self.d.compile(GM)
        self.same_compiled = c1 is c2
        self.history = self.d.run(GM, STEPS, log_every=1)
        self.trace_count = self.d.trace_count
        # A second trace of the guarded step must be refused.
        try:
            jax.jit(lambda s, t: self.d._step_fn(s, t)).trace(self.d.state, GM)  # fresh fn: no jit cache
            self.retrace_refused = False
        except AssertionError as e:
            self.retrace_refused = "must compile once" in str(e)
        self.final = jax.device_get(self.d.state)
        self.final_specs = _specs(self.d.state)


_RUNS: dict = {}


def _run(method: str, mesh_shape: tuple) -> Run:
    key = (method, mesh_shape)
    if key not in _RUNS:
        devices = jax.devices()[: int(np.prod(mesh_shape))]
        _RUNS[key] = Run(method, make_mesh(mesh_shape, devices))
    return _RUNS[key]


@pytest.fixture(scope="module", autouse=True)
def _free_runs():
    yield
    _RUNS.clear()


MESH = (2, 4, 1)
ONE = (1, 1, 1)


# ---------------------------------------------------------------------------------------------
# 1. One compile
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["sid", "dmd2", "fdistill"])
def test_compiles_once_and_runs(method):
    r = _run(method, MESH)
    assert r.same_compiled, "compile() must cache the compiled step"
    assert r.trace_count == 1, "the step must have been traced exactly once"
    assert r.retrace_refused, "a second trace must be refused by the compile-once guard"
    assert len(r.history) == STEPS
    assert int(r.final.step) == STEPS
    for h in r.history:
        assert all(np.isfinite(v) for v in h.values()), h
    if method == "fdistill":
        assert "disc_loss" in r.history[-1] and "gen_adv_loss" in r.history[-1]


def test_run_again_reuses_compiled():
    r = _run("fdistill", MESH)  # not used by the numerical comparison below
    compiled, before = r.d._compiled, int(r.d.state.step)
    r.d.run(GM, 2)  # would raise if the step were traced again
    assert r.d._compiled is compiled
    assert int(r.d.state.step) == before + 2
    assert _specs(r.d.state) == r.final_specs


# ---------------------------------------------------------------------------------------------
# 2. Shardings follow the rules (embed→fsdp, mlp→tensor), optimizer states follow parameters
# ---------------------------------------------------------------------------------------------

EXPECTED = {
    ("layers", 0, "kernel"): ("fsdp", "tensor"),  # ("embed", "mlp")
    ("layers", 0, "bias"): ("tensor",),
    ("inp", "kernel"): (None, "tensor"),  # (None, "mlp")
    ("noise_emb", "kernel"): (None, "tensor"),
    ("out", "kernel"): ("fsdp",),  # ("embed", None)
    ("out", "bias"): (),
}


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


@pytest.mark.parametrize("when", ["init", "final"])
@pytest.mark.parametrize("method", ["dmd2", "fdistill"])
def test_param_and_optimizer_specs(method, when):
    r = _run(method, MESH)
    specs = r.init_specs if when == "init" else r.final_specs
    for path, want in EXPECTED.items():
        assert _get(specs.gen, path) == want, (path, _get(specs.gen, path))
        assert _get(specs.ema, path) == want, ("ema", path)
        assert _get(specs.critic["net"], path) == want, ("critic", path)
        for adam in _adam_states(specs.gen_opt):
            assert _get(adam.mu, path) == want, ("gen mu", path)
            assert _get(adam.nu, path) == want, ("gen nu", path)
        for adam in _adam_states(specs.critic_opt):
            assert _get(adam.mu["net"], path) == want, ("critic mu", path)
            assert _get(adam.nu["net"], path) == want, ("critic nu", path)
    assert len(_adam_states(specs.gen_opt)) == 1 and len(_adam_states(specs.critic_opt)) == 1
    if method == "fdistill":
        assert specs.critic["head"]["hidden"]["kernel"] == ("fsdp", "tensor")
        assert specs.critic["head"]["out"]["kernel"] == ("fsdp",)
        assert _adam_states(specs.critic_opt)[0].mu["head"]["hidden"]["kernel"] == ("fsdp", "tensor")
    # counters, scalars and the key: replicated
    assert specs.step == () and specs.key == ()
    for adam in _adam_states(specs.gen_opt) + _adam_states(specs.critic_opt):
        assert adam.count == ()


def test_replicated_leaves_are_fully_replicated():
    d = _run("dmd2", MESH).d
    assert d.state.step.sharding.is_fully_replicated
    assert d.state.key.sharding.is_fully_replicated
    for adam in _adam_states(d.state.gen_opt) + _adam_states(d.state.critic_opt):
        assert adam.count.sharding.is_fully_replicated
    assert not d.state.gen["layers"][0]["kernel"].sharding.is_fully_replicated


def test_tensor_axis_really_splits_the_data():
    """On mesh (1, 2, 4) the hidden kernel [32, 32] lives as [16, 8] blocks; 'inp' [2, 32] as [2, 8]."""
    mesh = make_mesh((1, 2, 4))
    d = _distiller("sid", mesh)
    k = d.state.gen["layers"][0]["kernel"]
    assert k.sharding.is_equivalent_to(NamedSharding(mesh, P("fsdp", "tensor")), 2)
    assert {s.data.shape for s in k.addressable_shards} == {(HIDDEN // 2, HIDDEN // 4)}
    assert {s.data.shape for s in d.state.gen["inp"]["kernel"].addressable_shards} == {(2, HIDDEN // 4)}
    assert {s.data.shape for s in d.state.gen["out"]["kernel"].addressable_shards} == {(HIDDEN // 2, 2)}
    mu = _adam_states(d.state.gen_opt)[0].mu["layers"][0]["kernel"]
    assert {s.data.shape for s in mu.addressable_shards} == {(HIDDEN // 2, HIDDEN // 4)}
    assert not k.sharding.is_equivalent_to(NamedSharding(mesh, P()), 2)


# ---------------------------------------------------------------------------------------------
# 3. Same numbers as on one device
# ---------------------------------------------------------------------------------------------

# dmd2 (n_critic > 1, generator first) is heavy: sid keeps the property in `make test`'s time budget.
@pytest.mark.parametrize("method", ["sid", pytest.param("dmd2", marks=pytest.mark.heavy)])
def test_sharded_equals_single_device(method):
    many, one = _run(method, MESH), _run(method, ONE)
    for a, b in zip(jax.tree.leaves(many.init), jax.tree.leaves(one.init)):
        np.testing.assert_array_equal(a, b)
    moved = 0.0
    for part in ("gen", "critic", "ema"):
        leaves = jax.tree_util.tree_leaves_with_path(getattr(many.final, part))
        for (path, a), b, a0 in zip(leaves, jax.tree.leaves(getattr(one.final, part)),
                                    jax.tree.leaves(getattr(many.init, part))):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4, err_msg=f"{part}{jax.tree_util.keystr(path)}")
            moved = max(moved, float(np.max(np.abs(a - a0))))
    # the comparison means something: 5 steps moved some weight by far more than the tolerance
    assert moved > 100 * 1e-4, moved
    for a, b in zip(jax.tree.leaves(many.final.gen_opt), jax.tree.leaves(one.final.gen_opt)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
    np.testing.assert_array_equal(many.final.key, one.final.key)
    assert len(many.history) == len(one.history) == STEPS
    for hm, ho in zip(many.history, one.history):
        assert hm.keys() == ho.keys()
        assert hm["k"] == ho["k"]
        for name in hm:
            np.testing.assert_allclose(hm[name], ho[name], rtol=1e-4, atol=1e-4, err_msg=name)


# ---------------------------------------------------------------------------------------------
# 4. Bad input
# ---------------------------------------------------------------------------------------------

def test_models_split_the_batch_over_the_trainers_batch_axes():
    from jaxdistill.models import target
    from jaxdistill.train import sharding

    assert target.BATCH_AXES == sharding.BATCH_AXES  # two definitions: target.py imports nothing of jaxdistill


def test_samplers_trace_for_their_mesh():
    """`target.jit_for` (the Distiller's and SD run's samplers) traces under `compiling_for`: the
    UNet's batch constraints and kernels see the run's mesh, as in the train step."""
    from jaxdistill.models import target

    mesh, seen = make_mesh(MESH), []

    def double(x):
        seen.append(target.mesh())
        return target.shard_batch(x) * 2

    out = target.jit_for(mesh, double)(np.ones((8, 3), np.float32))
    assert seen == [mesh] and target.mesh() is None
    np.testing.assert_array_equal(np.asarray(out), 2 * np.ones((8, 3)))
    assert out.sharding.spec == P(("data", "fsdp"))  # the constraint, as the step's activations get


def test_layers_gather_their_kernels_over_fsdp_before_use_and_scatter_their_gradients():
    """FSDP's all-gather before use (`target.gather_weight`): a linear layer's fsdp-split kernel
    is constrained whole (and split over tensor along its "mlp" axis) before its matmul, so XLA
    cannot run it as a windowed einsum over kernel shards (`test_planning` compiles that case for
    a TPU slice); its gradient is constrained back to the kernel's own sharding (a reduce-scatter
    of the batch shards' partial sums, not an all-reduce); the gradient is the unsharded one."""
    import re

    from jaxdistill.models import layers, target
    from jaxdistill.train import sharding

    assert {a: m for a, m in sharding.DEFAULT_RULES if a != "batch"} == layers.KERNEL_MESH_AXES
    mesh = make_mesh((1, 4, 2))
    layer = layers.dense(16, 32, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer, nnx.Param)
    params = nnx.to_pure_dict(params)
    x = np.random.default_rng(0).normal(size=(8, 16)).astype(np.float32)

    def loss(p, x):
        return (nnx.merge(graphdef, p)(x) ** 2).sum()

    grad = jax.jit(jax.grad(loss), in_shardings=(sharding.named(mesh, sharding.param_specs(layer)),
                                                 NamedSharding(mesh, P(sharding.BATCH_AXES))))
    with target.compiling_for(mesh):
        lowered = grad.lower(params, x).as_text()
    constraints = re.findall(r'sharding_constraint %\S+ <@mesh, (\[.*?\])> : tensor<16x32xf32>', lowered)
    # the [16, 32] kernel, split (fsdp 4, tensor 2) on entry, is constrained whole over fsdp and
    # split over tensor; its cotangent is summed whole, then sliced back to (fsdp, tensor)
    assert constraints == ['[{}, {"tensor"}]', '[{}, {"tensor"}]', '[{"fsdp"}, {"tensor"}]'], constraints
    with target.compiling_for(mesh):
        sharded = grad(params, x)
    expected = jax.grad(loss)(params, x)
    np.testing.assert_allclose(sharded["kernel"], expected["kernel"], rtol=1e-5, atol=1e-5)
    assert sharded["kernel"].sharding.spec == P("fsdp", "tensor")
    assert target.gather_weight(x, ("fsdp", "tensor")) is x  # outside compiling_for: unchanged


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_kernel_gradients_reduce_over_fsdp_then_data(kind, monkeypatch):
    """On a mesh with data and fsdp axes (2, 4, 1), a layer's kernel gradient is reduced in two
    stages (`target.apply_gathered`): a reduce-scatter over each fsdp group, then an all-reduce
    of the shard over data, where summing over all 8 batch shards and slicing sends an
    all-reduce of the whole kernel. The gradients are the unsharded ones, and the two-stage
    program sends about half the reduction's bytes (ring model, `costs.step_cost`)."""
    from jaxdistill.models import layers, target
    from jaxdistill.train import costs, sharding

    mesh = make_mesh((2, 4, 1))
    layer = (layers.dense(64, 32, rngs=nnx.Rngs(0)) if kind == "dense"
             else layers.conv(64, 32, 3, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(layer, nnx.Param)
    params = nnx.to_pure_dict(params)
    x = np.random.default_rng(0).normal(size=(8, 5, 64) if kind == "dense" else (8, 6, 6, 64)).astype(np.float32)

    def loss(p, x):
        return (nnx.merge(graphdef, p)(x) ** 2).mean()

    def compiled_and_grads():  # a new jit each time: a cached trace would not see the patch below
        grad = jax.jit(jax.grad(loss, argnums=(0, 1)), in_shardings=(
            sharding.named(mesh, sharding.param_specs(layer)), NamedSharding(mesh, P(sharding.BATCH_AXES))))
        with target.compiling_for(mesh):
            return grad.lower(params, x).compile(), grad(params, x)

    compiled, grads = compiled_and_grads()
    expected = jax.grad(loss, argnums=(0, 1))(params, x)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    own = NamedSharding(mesh, sharding.param_specs(layer)["kernel"])
    assert grads[0]["kernel"].sharding.is_equivalent_to(own, params["kernel"].ndim)
    kernel_bytes = params["kernel"].size * 4
    sent = costs.step_cost(compiled, 8).collectives
    # the reduce-scatter over fsdp = 4 sends 3 kernel shards; the data all-reduce of one shard
    # (2 · 1/2 · S/4) and the replicated bias's all-reduce over all 8 are all-reduces
    assert sent["reduce-scatter"] == 3 / 4 * kernel_bytes
    assert sent["all-reduce"] == kernel_bytes / 4 + 2 * 7 / 8 * params["bias"].size * 4

    monkeypatch.setattr(target, "apply_gathered", lambda op, lhs, w, axes: op(lhs, target.gather_weight(w, axes)))
    one_stage = costs.step_cost(compiled_and_grads()[0], 8).collectives
    assert one_stage["reduce-scatter"] == 0  # XLA:CPU keeps the all-reduce over all 8 and slices
    assert sent["reduce-scatter"] + sent["all-reduce"] < 0.6 * one_stage["all-reduce"]


def test_batch_not_divisible_by_data_times_fsdp():
    with pytest.raises(ValueError, match=r"batch_size=12.*data×fsdp = 8"):
        _distiller("sid", make_mesh(MESH), batch_size=12)
    _distiller("sid", make_mesh((1, 2, 4)), batch_size=12)  # 12 divides by data×fsdp = 2: fine


@pytest.mark.parametrize("shape", [(2, 2, 1), (4, 4, 1), (1, 1, 1)])
def test_mesh_needs_all_devices(shape):
    with pytest.raises(ValueError, match=rf"needs {int(np.prod(shape))} devices; 8 are available"):
        make_mesh(shape)


@pytest.mark.parametrize("shape", [(2, 4), (0, 8, 1), (2, -4, -1)])
def test_mesh_shape_must_be_three_positive_sizes(shape):
    with pytest.raises(ValueError, match="three positive sizes"):
        make_mesh(shape)


def test_fsdp_dimension_not_divisible_names_parameter():
    with pytest.raises(ValueError, match=r"\['layers'\]\[0\]\['kernel'\].*\(30, 30\).*not divisible by mesh size 4"):
        _distiller("sid", make_mesh(MESH), hidden=30)


def test_tensor_dimension_not_divisible_names_parameter():
    with pytest.raises(ValueError, match=r"\['inp'\]\['(bias|kernel)'\].*30.*not divisible by mesh size 4"):
        _distiller("sid", make_mesh((1, 2, 4)), hidden=30)


def test_discriminator_method_needs_head():
    spec = _spec("fdistill")
    gen, critic, _ = _networks(spec)
    with pytest.raises(ValueError, match="head"):
        Distiller(spec, mixture_problem(GM), gen, critic, None, batch_size=BATCH, mesh=make_mesh(MESH))


# ---------------------------------------------------------------------------------------------
# 5. get_method bad input
# ---------------------------------------------------------------------------------------------

def test_get_method_unknown_name():
    with pytest.raises(ValueError, match=r"'sdi'.*unknown.*'sid'"):
        get_method("sdi")


def test_get_method_dmd2_rejects_critic_cfg():
    from jaxdistill.guidance import guidance_preset

    g = guidance_preset("sid_lsg", 2.0)
    with pytest.raises(ValueError, match=r"'dmd2'.*cfg_fake_eval=2\.0.*allow_fake_cfg=True"):
        get_method("dmd2", guidance=g)
    with pytest.raises(ValueError, match=r"'fdistill'.*allow_fake_cfg"):
        get_method("fdistill", guidance=g)
    spec = get_method("dmd2", guidance=g, allow_fake_cfg=True)
    assert spec.guidance.cfg_fake_eval == 2.0 and spec.guidance.cfg_fake_train == 2.0
    # the same guidance is fine for SiD, and DMD2's own preset is fine at any teacher κ
    get_method("sid", guidance=g)
    assert get_method("dmd2", guidance=guidance_preset("dmd2", 3.0)).guidance.cfg_teacher == 3.0


def test_get_method_empty_ladder():
    with pytest.raises(ValueError, match=r"sigma_ladder.*K >= 1"):
        get_method("sid", sigma_ladder=())


def test_get_method_unknown_override():
    with pytest.raises(ValueError, match=r"'alpah'.*kernel 'sid'.*alpha"):
        get_method("sid", alpah=1.0)
    with pytest.raises(ValueError, match=r"'alpha'.*kernel 'dmd'"):
        get_method("dmd2", alpha=1.0)  # a SiD kernel argument is not a DMD one
    assert get_method("sid", alpha=1.0).kernel_kwargs["alpha"] == 1.0
    assert get_method("dmd2", n_critic=2).n_critic == 2


@pytest.mark.parametrize("over, pattern", [
    ({"order": "sideways"}, r"order='sideways'.*critic_first"),
    ({"n_critic": 0}, r"n_critic must be >= 1; got 0"),
])
def test_get_method_bad_fields(over, pattern):
    with pytest.raises(ValueError, match=pattern):
        get_method("sid", **over)
