"""AutoencoderKL: parity with diffusers' PyTorch AutoencoderKL on a tiny random config, weight
round trips through safetensors, the latent-scaling convention, and the errors bad inputs raise.

Kept fast for CI: one tiny config (SD's VAE architecture at block_out_channels (32, 64), with
SD3/FLUX-style `scaling_factor` and `shift_factor` values so the pipeline formula is checked on
the same compiled program), one jitted function computing everything compared, hence one XLA
compilation for the file (the fp16-loaded model reuses it). The decoder is checked through
`images_from_latents`, i.e. decode(z / scaling_factor + shift_factor), against torch's decode
of the same input; the other latent conventions are checked on the formula alone.
"""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdistill.models.vae import AutoencoderKL, DiagonalGaussian
from jaxdistill.models.weights import WeightsError

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SCALE, SHIFT = 1.5305, 0.0609  # SD3's values; SD1.x/2.x/SDXL have shift_factor None
TINY = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[32, 64], layers_per_block=1,
            latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=SCALE, shift_factor=SHIFT)
PARITY_ATOL = 1e-4


def nchw(a):
    return np.asarray(a, np.float32).transpose(0, 3, 1, 2)


def nhwc(a):
    return np.ascontiguousarray(np.asarray(a).transpose(0, 2, 3, 1))


@nnx.jit
def _run(model, x, z, key):
    posterior = model.encode(x)
    return dict(mean=posterior.mean, logvar=posterior.logvar, std=posterior.std, sample=posterior.sample(key),
                latents=model.latents_from_images(x), images=model.images_from_latents(z))


def _key():
    # An "rbg" key: on CPU, XLA compiles threefry sampling several seconds slower (measured ~6 s vs ~1 s).
    return jax.random.key(0, impl="rbg")


@pytest.fixture(scope="module")
def torch_vae():
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(**TINY).eval()


@pytest.fixture(scope="module")
def inputs():
    """Images in [-1, 1] (batch 2, 16x16) and scaled latents, NCHW as torch takes them."""
    rng = np.random.default_rng(0)
    return (rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32),
            rng.standard_normal((2, 4, 8, 8)).astype(np.float32))


@pytest.fixture(scope="module")
def saved(torch_vae, tmp_path_factory):
    """A pipeline-root folder holding the torch model under vae/."""
    root = tmp_path_factory.mktemp("sd")
    torch_vae.save_pretrained(str(root / "vae"))
    return root


@pytest.fixture(scope="module")
def reference(torch_vae, inputs):
    """The torch model's outputs, and the SD3 pipeline's latent formulas computed with it."""
    x, z = inputs
    with torch.no_grad():
        post = torch_vae.encode(torch.from_numpy(x)).latent_dist
        return dict(mean=post.mean.numpy(), logvar=post.logvar.numpy(),
                    latents=((post.mode() - SHIFT) * SCALE).numpy(),
                    images=torch_vae.decode(torch.from_numpy(z) / SCALE + SHIFT).sample.numpy())


@pytest.fixture(scope="module")
def ours(saved, inputs):
    model = AutoencoderKL.from_pretrained(str(saved))  # the pipeline root: resolves root/vae
    x, z = inputs
    return model, jax.tree.map(nchw, _run(model, nhwc(x), nhwc(z), _key()))


def test_parity_with_diffusers(ours, reference):
    """Encoder mean/logvar; decoder and the shift/scale convention: latents = (mode − shift)·s,
    images = decode(latents / s + shift), against the same computation on the torch model."""
    _, out = ours
    errors = {}
    for name in ("mean", "logvar", "latents", "images"):
        assert out[name].shape == reference[name].shape, name
        errors[name] = float(np.abs(out[name] - reference[name]).max())
    assert max(errors.values()) < PARITY_ATOL, errors
    # A posterior draw is mean + std · ε with ε standard normal.
    eps = (out["sample"] - out["mean"]) / out["std"]
    assert abs(eps.mean()) < 0.2 and abs(eps.std() - 1) < 0.2, (eps.mean(), eps.std())
    np.testing.assert_allclose(out["std"], np.exp(0.5 * reference["logvar"]), rtol=1e-4)


def test_save_pretrained_round_trips_bit_identical(ours, torch_vae, tmp_path):
    model, _ = ours
    model.save_pretrained(str(tmp_path))
    with open(tmp_path / "config.json") as f:
        config = json.load(f)
    assert config["_class_name"] == "AutoencoderKL"
    assert (config["scaling_factor"], config["shift_factor"]) == (SCALE, SHIFT)
    back = diffusers.AutoencoderKL.from_pretrained(str(tmp_path))
    assert (back.config.scaling_factor, back.config.shift_factor) == (SCALE, SHIFT)
    expected, got = torch_vae.state_dict(), back.state_dict()
    assert sorted(expected) == sorted(got)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


@pytest.mark.parametrize("stats, expected_latents, expected_images", [
    # SD1.x/2.x/SDXL: shift_factor None -> 0.
    (dict(scaling_factor=0.18215, shift_factor=None),
     lambda z: z * 0.18215, lambda z: z / 0.18215),
    # Playground v2.5 under the SDXL pipeline: per-channel latents_mean / latents_std.
    (dict(scaling_factor=0.5, latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.0, 0.5, 4.0]),
     lambda z: (z - np.array([0.1, -0.2, 0.3, 0.0])) * 0.5 / np.array([2.0, 1.0, 0.5, 4.0]),
     lambda z: z * np.array([2.0, 1.0, 0.5, 4.0]) / 0.5 + np.array([0.1, -0.2, 0.3, 0.0])),
], ids=["sd-default", "latents-mean-std"])
def test_latent_conventions_formula(stats, expected_latents, expected_images):
    config = dict(TINY, block_out_channels=[8], down_block_types=["DownEncoderBlock2D"],
                  up_block_types=["UpDecoderBlock2D"], norm_num_groups=4, **stats)
    model = nnx.eval_shape(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0)))
    z = np.random.default_rng(1).standard_normal((2, 8, 8, 4)).astype(np.float32)
    model.encode = lambda x: DiagonalGaussian(z, np.zeros_like(z))  # isolate the formula (host arrays: fast)
    model.decode = lambda latents: latents
    np.testing.assert_allclose(model.latents_from_images(None), expected_latents(z), atol=1e-6)
    np.testing.assert_allclose(model.images_from_latents(z), expected_images(z), atol=1e-6)


def test_posterior_mode_std_and_kl():
    mean, logvar = np.full((1, 2, 2, 4), 0.5, np.float32), np.full((1, 2, 2, 4), 2.0, np.float32)
    posterior = DiagonalGaussian(mean, logvar)
    assert posterior.mode() is mean
    np.testing.assert_allclose(posterior.std, np.exp(1.0), rtol=1e-6)
    np.testing.assert_allclose(posterior.kl(), 0.5 * 16 * (0.25 + np.exp(2.0) - 1.0 - 2.0), rtol=1e-6)


def test_fp16_variant_loads_within_fp16_tolerance(torch_vae, inputs, reference, tmp_path):
    copy.deepcopy(torch_vae).half().save_pretrained(str(tmp_path), variant="fp16")
    model = AutoencoderKL.from_pretrained(str(tmp_path), variant="fp16")  # parameters upcast to float32
    assert model.encoder.conv_in.kernel.dtype == jnp.float32
    half = torch_vae.encoder.conv_in.weight.detach().half().float().numpy()
    np.testing.assert_array_equal(np.asarray(model.encoder.conv_in.kernel).transpose(3, 2, 0, 1), half)
    x, z = inputs
    out = jax.tree.map(nchw, _run(model, nhwc(x), nhwc(z), _key()))  # same graph as the float32 model: no recompile
    for name in ("mean", "logvar", "latents", "images"):
        scale = max(float(np.abs(reference[name]).max()), 1.0)
        err = float(np.abs(out[name] - reference[name]).max())
        assert err < 1e-2 * scale, f"{name}: max abs error {err:.3g} (scale {scale:.3g})"


def test_loads_onto_a_mesh(saved, torch_vae):
    from jaxdistill.train.sharding import make_mesh

    mesh = make_mesh((1, len(jax.devices()), 1))
    model = AutoencoderKL.from_pretrained(str(saved / "vae"), mesh=mesh)
    kernel = model.encoder.down_blocks[1].resnets[0].conv1.kernel  # [3, 3, 32, 64]: "embed" on fsdp
    assert kernel.sharding.spec[2] == "fsdp"
    expected = torch_vae.encoder.down_blocks[1].resnets[0].conv1.weight.detach().numpy()
    np.testing.assert_array_equal(np.asarray(kernel).transpose(3, 2, 0, 1), expected)


def test_parameter_tree_matches_diffusers_for_other_options():
    """No mid-block attention, no quant convs, 3 blocks of 2 layers: same keys and shapes as torch."""
    from jaxdistill.models.weights import parameter_keys

    config = dict(TINY, down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3,
                  block_out_channels=[8, 16, 16], layers_per_block=2, norm_num_groups=4,
                  mid_block_add_attention=False, use_quant_conv=False, use_post_quant_conv=False)
    expected = {k: tuple(v.shape) for k, v in diffusers.AutoencoderKL(**config).state_dict().items()}
    model = nnx.eval_shape(lambda: AutoencoderKL(config, rngs=nnx.Rngs(0)))
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    got = {}
    for path, (key, _) in parameter_keys(model).items():
        leaf = pure
        for p in path:
            leaf = leaf[p]
        shape = leaf.shape
        got[key] = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)
    assert got == expected


@pytest.mark.parametrize("key, value", [
    ("act_fn", "gelu"),
    ("down_block_types", ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"]),
    ("up_block_types", ["UpDecoderBlock2D"]),
    ("norm_num_groups", 5),
    ("attention_type", "sparse"),
])
def test_unsupported_config_raises_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        AutoencoderKL(dict(TINY, **{key: value}), rngs=nnx.Rngs(0))


def test_missing_weights_raise(tmp_path):
    with open(tmp_path / "config.json", "w") as f:
        json.dump(dict(TINY, _class_name="AutoencoderKL"), f)
    with pytest.raises(WeightsError, match="no weights file"):
        AutoencoderKL.from_pretrained(str(tmp_path))
    with pytest.raises(WeightsError, match="no weights file"):
        AutoencoderKL.from_pretrained(str(tmp_path), variant="fp16")
    with pytest.raises(WeightsError, match="does not exist"):
        AutoencoderKL.from_pretrained(os.path.join(str(tmp_path), "nowhere"))
