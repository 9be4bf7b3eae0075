"""The shared PyTorch-layout safetensors loader (`jaxdistill.models.weights`) on a tiny module."""

import json
import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

torch = pytest.importorskip("torch")

from safetensors.torch import load_file, save_file  # noqa: E402

from jaxdistill.models import weights  # noqa: E402
from jaxdistill.models.weights import WeightsError  # noqa: E402
from jaxdistill.train.sharding import DEFAULT_RULES, make_mesh  # noqa: E402


class Tiny(nnx.Module):
    """A Linear, a Conv, a GroupNorm and an Embed in an nnx.List: keys `blocks.N.*`."""

    def __init__(self, rngs: nnx.Rngs):
        part = nnx.with_partitioning
        with nnx.use_eager_sharding(False):
            self.blocks = nnx.List([
                nnx.Linear(8, 16, kernel_init=part(nnx.initializers.lecun_normal(), ("embed", "mlp")),
                           bias_init=part(nnx.initializers.zeros_init(), ("mlp",)), rngs=rngs),
                nnx.Conv(3, 4, (3, 3), rngs=rngs),
                nnx.GroupNorm(4, num_groups=2, epsilon=1e-5, rngs=rngs),
                nnx.Embed(10, 8, embedding_init=part(nnx.initializers.normal(1.0), (None, "embed")), rngs=rngs),
            ])


def _torch_twin() -> "torch.nn.Module":
    torch.manual_seed(0)
    twin = torch.nn.Module()
    twin.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 16), torch.nn.Conv2d(3, 4, 3, padding=1),
                                       torch.nn.GroupNorm(2, 4), torch.nn.Embedding(10, 8)])
    with torch.no_grad():  # non-trivial norm parameters
        twin.blocks[2].weight.uniform_(0.5, 1.5)
        twin.blocks[2].bias.uniform_(-0.5, 0.5)
    return twin.eval()


TWIN = _torch_twin()
STATE = {k: v.detach().clone() for k, v in TWIN.state_dict().items()}
ABSTRACT = nnx.eval_shape(lambda: Tiny(nnx.Rngs(0)))


def _save(folder, tensors, name="model.safetensors"):
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(str(folder), name))
    return str(folder)


def _load(folder, **kw):
    return weights.load_params(ABSTRACT, weights.open_weights(str(folder)), **kw)


def _assert_loaded(model, state):
    """Each parameter equals its torch tensor in our layout, exactly."""
    got = weights.module_tensors(model)
    assert sorted(got) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(got[key], value.float().numpy(), err_msg=key)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_float_files_load(tmp_path, dtype):
    state = {k: v.to(getattr(torch, dtype)) for k, v in STATE.items()}
    model = _load(_save(tmp_path, state))
    _assert_loaded(model, state)
    b = model.blocks
    assert b[0].kernel[...].dtype == jnp.float32  # the abstract module's dtype by default
    if dtype == "bfloat16":  # read through ml_dtypes, no torch: the raw reader keeps bf16
        raw, _ = weights.read_safetensors(str(tmp_path / "model.safetensors"))
        assert raw["blocks.0.weight"].dtype == ml_dtypes.bfloat16
        as16 = _load(tmp_path, dtype=jnp.bfloat16)
        assert as16.blocks[0].kernel[...].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(as16.blocks[0].kernel[...]).T.view(np.uint16),
                                      state["blocks.0.weight"].view(torch.int16).numpy().view(np.uint16))
    if dtype == "float32":  # the layouts are right: the modules compute the same functions
        rng = np.random.default_rng(0)
        v, x = rng.standard_normal((2, 8)).astype(np.float32), rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
        with torch.no_grad():
            ref_lin = TWIN.blocks[0](torch.from_numpy(v)).numpy()
            ref_conv = TWIN.blocks[1](torch.from_numpy(x).permute(0, 3, 1, 2))
            ref_norm = TWIN.blocks[2](ref_conv).permute(0, 2, 3, 1).numpy()
            ref_emb = TWIN.blocks[3](torch.tensor([3, 9])).numpy()
        # one compilation rather than one per eager op
        lin, conv, norm, emb = nnx.jit(lambda b, v, x, i: (b[0](v), b[1](x), b[2](b[1](x)), b[3](i)))(
            b, jnp.asarray(v), jnp.asarray(x), jnp.array([3, 9]))
        np.testing.assert_allclose(lin, ref_lin, atol=1e-5)
        np.testing.assert_allclose(conv, ref_conv.permute(0, 2, 3, 1).numpy(), atol=1e-5)
        np.testing.assert_allclose(norm, ref_norm, atol=1e-5)
        np.testing.assert_array_equal(emb, ref_emb)


def test_sharded_checkpoint_and_variant(tmp_path):
    keys = sorted(STATE)
    for variant, index_name in ((None, "model.safetensors.index.json"), ("fp16", "model.safetensors.index.fp16.json")):
        folder = tmp_path / (variant or "plain")
        tag = f".{variant}" if variant else ""
        files = [f"model{tag}-0000{i}-of-00002.safetensors" for i in (1, 2)]
        halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
        dt = torch.float16 if variant else torch.float32
        for name, part in zip(files, halves):
            _save(folder, {k: STATE[k].to(dt) for k in part}, name)
        weight_map = {k: name for name, part in zip(files, halves) for k in part}
        (folder / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        source = weights.open_weights(str(folder), variant=variant)
        assert len(source.files) == 2
        _assert_loaded(weights.load_params(ABSTRACT, source), {k: v.to(dt) for k, v in STATE.items()})
    (tmp_path / "plain" / files[1].replace(".fp16", "")).unlink()
    with pytest.raises(WeightsError, match=r"model.safetensors.index.json lists .*00002-of-00002.safetensors"):
        weights.open_weights(str(tmp_path / "plain"))


def test_pickle_only_folder_is_refused(tmp_path):
    torch.save(STATE, tmp_path / "pytorch_model.bin")
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x04not really")
    with pytest.raises(WeightsError, match=r"pickle checkpoints \(model.ckpt, pytorch_model.bin\)"):
        weights.open_weights(str(tmp_path))


def test_errors_name_file_and_key(tmp_path):
    with pytest.raises(WeightsError, match=r"weights folder .*nowhere does not exist"):
        weights.open_weights(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match=r"empty has no weights file: expected .*model.safetensors.*config.json"):
        weights.open_weights(str(tmp_path / "empty"))
    with pytest.raises(WeightsError, match=r"empty.*missing\.json is missing"):
        weights.read_config(str(tmp_path / "empty"), "missing.json")

    missing = {k: v for k, v in STATE.items() if k != "blocks.1.bias"}
    with pytest.raises(WeightsError, match=r"missing/model.safetensors has no tensor 'blocks.1.bias'"):
        _load(_save(tmp_path / "missing", missing))

    extra = {**STATE, "blocks.9.weight": torch.zeros(2), "blocks.0.position_ids": torch.arange(3)}
    with pytest.raises(WeightsError, match=r"extra/model.safetensors has 2 tensors .* 'blocks.9.weight'"):
        _load(_save(tmp_path / "extra", extra))
    _assert_loaded(_load(tmp_path / "extra", ignore=[r"blocks\.9\.weight", r".*position_ids"]), STATE)

    bad = {**STATE, "blocks.1.weight": torch.zeros(4, 3, 5, 5)}
    with pytest.raises(WeightsError, match=r"shape/model.safetensors: tensor 'blocks.1.weight' has shape "
                                           r"\(4, 3, 5, 5\), but .* expects \(4, 3, 3, 3\)"):
        _load(_save(tmp_path / "shape", bad))

    path = _save(tmp_path / "cut", STATE) + "/model.safetensors"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 16)
    with pytest.raises(WeightsError, match=r"cut/model.safetensors: tensor .* truncated or corrupt"):
        weights.open_weights(str(tmp_path / "cut"))


def test_prefix(tmp_path):
    folder = _save(tmp_path, {"model." + k: v for k, v in STATE.items()})
    _assert_loaded(_load(folder, prefix="model."), STATE)  # keys read as "model." + our key
    with pytest.raises(WeightsError, match=r"has no tensor 'blocks\.0\.(weight|bias)'.*closest keys: \['model\.blocks"):
        _load(folder)


def test_load_onto_mesh(tmp_path):
    mesh = make_mesh((2, 4, 1))
    shardings = weights.param_shardings(ABSTRACT, mesh, DEFAULT_RULES)
    model = _load(_save(tmp_path, STATE), shardings=shardings)
    kernel = model.blocks[0].kernel[...]
    assert kernel.sharding == NamedSharding(mesh, P("fsdp", "tensor"))
    assert model.blocks[0].bias[...].sharding == NamedSharding(mesh, P("tensor"))
    assert model.blocks[3].embedding[...].sharding == NamedSharding(mesh, P(None, "fsdp"))
    assert model.blocks[2].scale[...].sharding.is_fully_replicated
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (2, 16)
    _assert_loaded(model, STATE)
    assert weights.count_params(ABSTRACT) == weights.count_params(model) == sum(v.numel() for v in STATE.values())


def test_write_safetensors_is_read_by_torch(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "f16": rng.standard_normal((5,)).astype(np.float16),
        "bf16": rng.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "flag": np.array([True, False]),
        "scalar": np.array(2.5, np.float32),
        "jax": jnp.ones((2, 2), jnp.bfloat16),
    }
    path = str(tmp_path / "out.safetensors")
    weights.write_safetensors(path, tensors, metadata={"note": "x"})
    theirs = load_file(path)
    for key, value in tensors.items():
        value = np.asarray(value)
        t = theirs[key]
        assert tuple(t.shape) == value.shape, key
        if value.dtype == ml_dtypes.bfloat16:
            assert t.dtype == torch.bfloat16
            np.testing.assert_array_equal(t.view(torch.int16).numpy().view(np.uint16), value.view(np.uint16))
        else:
            np.testing.assert_array_equal(t.numpy(), value, err_msg=key)
    ours, meta = weights.read_safetensors(path)
    assert meta == {"format": "pt", "note": "x"}
    for key, value in tensors.items():
        np.testing.assert_array_equal(ours[key], np.asarray(value))
    # module_tensors -> file -> torch module: the same parameters as the twin's.
    model = _load(_save(tmp_path / "m", STATE))
    weights.write_safetensors(str(tmp_path / "back.safetensors"), weights.module_tensors(model))
    back = load_file(str(tmp_path / "back.safetensors"))
    assert sorted(back) == sorted(STATE) and all(torch.equal(back[k], STATE[k]) for k in STATE)
    with pytest.raises(WeightsError, match="cannot write tensor 'c'"):
        weights.write_safetensors(path, {"c": np.zeros(2, np.complex64)})
