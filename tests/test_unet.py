"""UNet2DConditionModel: parity with diffusers' PyTorch UNet on tiny random SD1.5-, SD2.1- and
SDXL-shaped configs, export back to diffusers, sharded loading, full-size parameter counts, and
the errors for unsupported configs and bad weight folders.

Tiny configs: block_out_channels (32, 64), one resnet per level, 8 norm groups, cross-attention
dim 32, 16x16 latents, batch 2 — every layer type and both projection forms, small enough that
the whole file runs in well under a minute on one CPU core. Every PyTorch parameter is perturbed
away from its initial value (norm scales of 1, zero biases) so that a layout mistake shows.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdistill.models.architectures import SD15_UNET, SD21_UNET, SDXL_UNET
from jaxdistill.models.unet import UNet2DConditionModel
from jaxdistill.models.weights import (
    WeightsError,
    count_params,
    module_tensors,
    read_safetensors,
    write_safetensors,
)
from xla_options import FAST_COMPILE

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

CA, D, CU, U = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"
TINY = {"block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": 32,
            "sample_size": 16}
TEXT_EMBEDS = 32
SHAPES = {
    # SD1.5: 1x1-conv projections, one head count for all levels.
    "sd15": dict(TINY, down_block_types=(CA, D), up_block_types=(U, CU), attention_head_dim=4),
    # SD2.1: linear projections, per-level head counts, upcast attention.
    "sd21": dict(TINY, down_block_types=(CA, CA), up_block_types=(CU, CU), attention_head_dim=[2, 4],
                 use_linear_projection=True, upcast_attention=True),
    # SDXL: no attention at the first level, deeper transformers below, text_time micro-conditioning.
    "sdxl": dict(TINY, down_block_types=(D, CA), up_block_types=(CU, U), attention_head_dim=[2, 4],
                 use_linear_projection=True, transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
                 addition_time_embed_dim=8, projection_class_embeddings_input_dim=TEXT_EMBEDS + 6 * 8),
}
TOL = 1e-4
PARITY: dict[str, float] = {}  # measured max |ours - diffusers|, printed by the parity test


def _inputs(name: str):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 16, 4)).astype(np.float32)
    t = np.array([10.0, 731.0], np.float32)
    ctx = rng.standard_normal((2, 7, 32)).astype(np.float32)
    added = None
    if name == "sdxl":
        added = {"text_embeds": rng.standard_normal((2, TEXT_EMBEDS)).astype(np.float32),
                 "time_ids": np.array([[16, 16, 0, 0, 16, 16], [24, 32, 2, 4, 16, 16]], np.float32)}
    return x, t, ctx, added


def _torch_forward(model, name: str) -> np.ndarray:
    x, t, ctx, added = _inputs(name)
    kw = {}
    if added is not None:
        kw["added_cond_kwargs"] = {k: torch.from_numpy(v) for k, v in added.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 16x16 batch of 2: threads only add overhead (0.06 s vs 0.2 s)
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t), torch.from_numpy(ctx),
                        **kw).sample
    finally:
        torch.set_num_threads(threads)
    return out.permute(0, 2, 3, 1).numpy()


def _forward(model: UNet2DConditionModel, name: str) -> np.ndarray:
    x, t, ctx, added = _inputs(name)
    args = (jnp.asarray(x), jnp.asarray(t), jnp.asarray(ctx),
            None if added is None else {k: jnp.asarray(v) for k, v in added.items()})
    graphdef, state = nnx.split(model)
    call = jax.jit(lambda state, *a: nnx.merge(graphdef, state)(*a))
    return np.asarray(call.lower(state, *args).compile(compiler_options=FAST_COMPILE)(state, *args))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{shape: (torch model, its diffusers folder, our model loaded from it, our output)}, built lazily."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            ref = diffusers.UNet2DConditionModel(**SHAPES[name]).eval()
            with torch.no_grad():
                for p in ref.parameters():
                    p.add_(0.05 * torch.randn_like(p))
            folder = str(tmp_path_factory.mktemp(name))
            ref.save_pretrained(folder)  # config.json + diffusion_pytorch_model.safetensors
            ours = UNet2DConditionModel.from_pretrained(folder)
            cache[name] = (ref, folder, ours, _forward(ours, name))
        return cache[name]

    return get


# ----------------------------------------------------------------------------- parity and export


@pytest.mark.parametrize("name", list(SHAPES))
def test_parity_with_diffusers(tiny, name):
    ref, _, _, out = tiny(name)
    expected = _torch_forward(ref, name)
    assert out.shape == expected.shape == (2, 16, 16, 4)
    err = float(np.abs(out - expected).max())
    PARITY[name] = err
    print(f"\n{name}: max |jax - diffusers| = {err:.3g} (output scale {np.abs(expected).max():.3g})")
    assert err < TOL, f"{name}: max abs error {err} >= {TOL}"


@pytest.mark.parametrize("name", list(SHAPES))
def test_export_round_trip(tiny, tmp_path, name):
    """Our save_pretrained -> diffusers' PyTorch from_pretrained: bit-identical weights, same output."""
    ref, _, ours, out = tiny(name)
    ours.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == "UNet2DConditionModel" and "_diffusers_version" in config
    back = diffusers.UNet2DConditionModel.from_pretrained(str(tmp_path)).eval()
    a, b = ref.state_dict(), back.state_dict()
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype == torch.float32, key
        assert torch.equal(a[key], b[key]), f"{key} changed in the round trip"
    np.testing.assert_allclose(_torch_forward(back, name), out, atol=TOL, rtol=0)


def test_sharded_load_matches_single_device(tiny):
    from jaxdistill.train.sharding import make_mesh

    _, folder, _, single = tiny("sd15")
    mesh = make_mesh((2, 4, 1))
    model = UNet2DConditionModel.from_pretrained(folder, mesh=mesh)
    params = nnx.state(model, nnx.Param)
    sharded = [x for x in jax.tree.leaves(params) if not x.sharding.is_fully_replicated]
    assert sharded, "no parameter was sharded over the (2, 4, 1) mesh"  # (norms stay replicated)
    # ff.net.2: Linear(128 -> 32), kernel [128, 32] with logical axes ("mlp", "embed").
    kernel = model.down_blocks[0].attentions[0].transformer_blocks[0].ff.net[2].kernel
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (128, 32 // 4)
    np.testing.assert_allclose(_forward(model, "sd15"), single, atol=1e-5, rtol=0)


def _trace(model: UNet2DConditionModel, name: str):
    """The forward's jaxpr (traced, not compiled)."""
    x, t, ctx, added = _inputs(name)
    graphdef, state = nnx.split(model)
    return jax.make_jaxpr(lambda state, x: nnx.merge(graphdef, state)(x, t, ctx, added))(state, x)


def test_remat_wraps_every_resnet_and_transformer_block(tiny):
    from jaxdistill.models.unet import remat_policy

    assert remat_policy("none") == (False, None) and remat_policy("full") == (True, None)
    _, folder, _, _ = tiny("sd15")
    model = UNet2DConditionModel.from_pretrained(folder, remat="dots_saveable")
    jaxpr = str(_trace(model, "sd15"))
    # sd15 tiny: 8 resnets (down 1+1, mid 2, up 2+2) and 4 transformer blocks (down 1, mid 1, up 2).
    assert jaxpr.count("remat2[") == 12
    assert "DotsSaveable(only_if_no_batch_dims=True)" in jaxpr


@pytest.fixture(scope="module")
def sdxl_grad_steps(tiny):
    """{scan_layers: (the compiled gradient of the sdxl inputs' mean squared output, that
    gradient)} for the sdxl tiny under remat="full" on one device, unrolled (False) and scanned
    (True): compiled once for the two tests below (the pair: 25-32 s of setup in the suite)."""
    _, folder, _, _ = tiny("sdxl")
    return {scan: _grad_step(UNet2DConditionModel.from_pretrained(folder, remat="full", scan_layers=scan))
            for scan in (False, True)}


def test_scanned_transformer_layers_equal_the_loop(tiny, sdxl_grad_steps):
    """scan_layers: the sdxl tiny's 2-block transformers run as one lax.scan (checkpointed body);
    loaded sharded over a (2, 4, 1) mesh its output equals the unrolled loop's, and so do its
    parameter gradients."""
    from jaxdistill.train.sharding import make_mesh

    _, folder, loop, out = tiny("sdxl")
    scanned = UNet2DConditionModel.from_pretrained(folder, mesh=make_mesh((2, 4, 1)), remat="full", scan_layers=True)
    assert scanned.down_blocks[1].attentions[0].scan_layers and not loop.down_blocks[1].attentions[0].scan_layers
    assert module_tensors(scanned).keys() == module_tensors(loop).keys()  # the same state-dict keys
    jaxpr = str(_trace(scanned, "sdxl"))
    # sdxl tiny: 2-block transformers in down level 1 (1), mid (1) and up level 0 (2): 4 scans whose
    # bodies are checkpointed, plus the 8 resnets' checkpoints (the loop would have 8 + 8 blocks').
    assert jaxpr.count("scan[") == 4 and jaxpr.count("remat2[") == 4 + 8
    np.testing.assert_allclose(_forward(scanned, "sdxl"), out, atol=1e-5, rtol=0)

    grads = [nnx.to_flat_state(sdxl_grad_steps[scan][1]) for scan in (False, True)]
    for (path, a), (path_b, b) in zip(*grads, strict=True):
        assert path == path_b
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-6, rtol=1e-4, err_msg=".".join(map(str, path)))


def _grad_step(model: UNet2DConditionModel):
    """(the compiled gradient of the sdxl inputs' mean squared output, that gradient)."""
    x, t, ctx, added = _inputs("sdxl")
    graphdef, params = nnx.split(model)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(jnp.asarray(x), t, ctx, added) ** 2)  # noqa: E731
    compiled = jax.jit(jax.grad(loss)).lower(params).compile(compiler_options=FAST_COMPILE)
    return compiled, compiled(params)


def test_the_planner_counts_every_scanned_layer(sdxl_grad_steps):
    """XLA's cost analysis sees one block per scan; `costs.step_cost` adds the other iterations
    (the same program unrolled is the reference, both under remat="full" on one device)."""
    from jaxdistill.train.costs import step_cost

    loop, scanned = (sdxl_grad_steps[scan][0] for scan in (False, True))
    unrolled = loop.cost_analysis()["flops"]
    assert scanned.cost_analysis()["flops"] < 0.9 * unrolled
    assert abs(step_cost(scanned, 1).flops / unrolled - 1) < 0.03, (step_cost(scanned, 1).flops, unrolled)


def test_bfloat16_compute_keeps_float32_params(tiny):
    _, folder, _, _ = tiny("sdxl")
    model = UNet2DConditionModel.from_pretrained(folder, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}
    out = _trace(model, "sdxl").out_avals[0]
    assert out.shape == (2, 16, 16, 4) and out.dtype == jnp.bfloat16


# ----------------------------------------------------------------------------- full-size shapes

@pytest.mark.parametrize("config, expected, tensors", [
    (SD15_UNET, 859_520_964, 686),
    (SD21_UNET, 865_910_724, 686),  # diffusers 0.42.1 on torch.device("meta")
    (SDXL_UNET, 2_567_463_684, 1680),
], ids=["sd15", "sd21", "sdxl"])
def test_full_size_parameter_counts(config, expected, tensors):
    model = UNet2DConditionModel.abstract(config, dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in params)  # nothing allocated
    assert count_params(model) == expected
    assert len(params) == tensors


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("key, value", [
    ("class_embed_type", "timestep"),
    ("addition_embed_type", "text_image"),
    ("resnet_time_scale_shift", "scale_shift"),
    ("time_cond_proj_dim", 256),
    ("only_cross_attention", True),
    ("dual_cross_attention", True),
    ("encoder_hid_dim", 1024),
    ("down_block_types", ["AttnDownBlock2D", "DownBlock2D"]),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"),
    ("not_a_diffusers_key", 1),
])
def test_unsupported_config_names_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        UNet2DConditionModel.abstract({**SHAPES["sd15"], key: value})


def test_unknown_remat_and_attention_impl():
    with pytest.raises(ValueError, match="remat"):
        UNet2DConditionModel.abstract(SHAPES["sd15"], remat="everything")
    with pytest.raises(ValueError, match="attention_impl"):
        UNet2DConditionModel.abstract(SHAPES["sd15"], attention_impl="flash")


def _write_folder(path, config: dict, tensors: dict | None = None) -> str:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"_class_name": "UNet2DConditionModel"} | config, f)
    if tensors is not None:
        write_safetensors(os.path.join(path, "diffusion_pytorch_model.safetensors"), tensors)
    return str(path)


def test_weights_of_another_config_name_file_and_key(tiny, tmp_path):
    _, folder, _, _ = tiny("sd15")
    other = _write_folder(tmp_path / "unet", dict(SHAPES["sd15"], cross_attention_dim=48))
    shutil.copy(os.path.join(folder, "diffusion_pytorch_model.safetensors"), other)
    with pytest.raises(WeightsError, match=r"diffusion_pytorch_model\.safetensors.*attn2\.to_k\.weight"):
        UNet2DConditionModel.from_pretrained(str(tmp_path))  # the model root: its unet/ is used


def test_folder_of_another_model_is_refused(tmp_path):
    folder = _write_folder(tmp_path, {"_class_name": "AutoencoderKL", "latent_channels": 4})
    with pytest.raises(WeightsError, match="AutoencoderKL"):
        UNet2DConditionModel.from_pretrained(folder)


def test_pickle_only_folder_is_refused(tmp_path):
    folder = _write_folder(tmp_path, SHAPES["sd15"])
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(WeightsError, match="pickle"):
        UNet2DConditionModel.from_pretrained(folder)


def test_missing_key_is_named(tiny, tmp_path):
    _, folder, _, _ = tiny("sd15")
    tensors, _ = read_safetensors(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    key = "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"
    tensors = {k: np.asarray(v) for k, v in tensors.items() if k != key}
    with pytest.raises(WeightsError, match=key.replace(".", r"\.")):
        UNet2DConditionModel.from_pretrained(_write_folder(tmp_path, SHAPES["sd15"], tensors))


def test_module_tensors_are_diffusers_keys(tiny):
    ref, _, ours, _ = tiny("sd21")
    assert sorted(module_tensors(ours)) == sorted(ref.state_dict())
