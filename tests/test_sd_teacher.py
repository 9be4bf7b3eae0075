"""The Stable Diffusion teacher bundle against diffusers' pipelines, and `train` end to end on a
tiny random SD folder: steps, checkpoint, decoded PNG grid, `sample`, `eval`, and an exported
UNet that diffusers loads."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdistill.commands.evaluate import evaluate
from jaxdistill.commands.export import export
from jaxdistill.commands.sample import sample
from jaxdistill.teachers.stable_diffusion import StableDiffusion, UNetDenoiser
from jaxdistill.train.program import RunError, open_run, train
from sd_folder import make_tiny_sd, write_prompts
from xla_options import FAST_COMPILE

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["a red circle", "a photo of a blue square"]


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_prompt_conditioning_and_teacher_denoiser_match_diffusers(tmp_path, kind):
    folder = make_tiny_sd(str(tmp_path / kind), kind)
    sd = StableDiffusion.from_pretrained(folder)
    bank = sd.encode_prompts(PROMPTS + [""], resolution=32)
    if kind == "sd15":
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                                requires_safety_checker=False)
        with torch.no_grad():
            ref, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
        added = None
    else:
        pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
        with torch.no_grad():
            ref, _, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=True)
        np.testing.assert_allclose(np.asarray(bank["text_embeds"][:2]), pooled.numpy(), atol=1e-5)
        # force_zeros_for_empty_prompt: the null condition is zeros, as diffusers' negative embeds.
        assert float(jnp.abs(bank["context"][2]).max()) == 0.0 and float(neg_pooled.abs().max()) == 0.0
        time_ids = np.array(bank["time_ids"][:2])  # a writable copy for torch
        np.testing.assert_array_equal(time_ids, [[32, 32, 0, 0, 32, 32]] * 2)
        added = {"text_embeds": pooled, "time_ids": torch.from_numpy(time_ids)}
    np.testing.assert_allclose(np.asarray(bank["context"][:2]), ref.numpy(), atol=1e-5)

    # σ-space teacher vs diffusers' UNet + the scheduler's x0 formula at integer timesteps.
    t = np.array([100, 700])
    ac = pipe.scheduler.alphas_cumprod.numpy()[t]
    rng = np.random.default_rng(0)
    x_t = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    with torch.no_grad():
        kw = {"added_cond_kwargs": added} if added is not None else {}
        eps = pipe.unet(torch.from_numpy(x_t), torch.from_numpy(t), ref, **kw).sample.numpy()
    x0_ref = (x_t - np.sqrt(1 - ac)[:, None, None, None] * eps) / np.sqrt(ac)[:, None, None, None]
    sigma = np.sqrt((1 - ac) / ac).astype(np.float32)
    x = jnp.asarray((x_t / np.sqrt(ac)[:, None, None, None]).transpose(0, 2, 3, 1))
    cond = jax.tree.map(lambda a: a[:2], bank)
    x0 = UNetDenoiser(sd.unet, sd.schedule)(x, jnp.asarray(sigma), cond)
    np.testing.assert_allclose(np.asarray(x0).transpose(0, 3, 1, 2), x0_ref, atol=2e-4, rtol=1e-4)


def _config(folder, prompts):
    import importlib.util

    path = os.path.join(ROOT, "configs", "sid_lsg_sd15.py")
    spec = importlib.util.spec_from_file_location("sid_lsg_sd15", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.teacher.update(path=folder, prompts=prompts)
    config.train.compiler_options = FAST_COMPILE
    return config


@pytest.mark.heavy  # 114 s on the 2-core machine (four builds and compiles of the tiny SD run)
def test_sid_lsg_sd15_tiny_trains_samples_evaluates_and_exports(tmp_path):
    folder = make_tiny_sd(str(tmp_path / "sd15"))
    config = _config(folder, write_prompts(str(tmp_path / "prompts.txt")))
    workdir = tmp_path / "run"
    summary = train(config, str(workdir), print_fn=lambda *_: None)
    assert summary["step"] == 2 and np.isfinite(summary["latent_rmse_to_teacher"])
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")][1:]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["gen_loss"]) for r in rows)
    grid = Image.open(workdir / "samples" / "samples_0000002.png")  # 4 decoded 32x32 images, 2x2
    assert grid.size == (2 * 34 + 2, 2 * 34 + 2) and np.asarray(grid).std() > 0

    grid = sample(str(workdir), num=2, out=str(tmp_path / "samples"), print_fn=lambda *_: None)
    assert Image.open(tmp_path / "samples" / "sample_s2_k1" / "000001.png").size == (32, 32)
    result = evaluate(str(workdir), num=2, print_fn=lambda *_: None)
    assert result["k=1"]["teacher"] == "DDIM 25 steps, CFG 1.5"

    unet_dir = export(str(workdir), str(tmp_path / "export"), print_fn=lambda *_: None)
    exported = diffusers.UNet2DConditionModel.from_pretrained(unet_dir)
    ema = jax.device_get(open_run(str(workdir)).distiller.state.ema)
    kernel = np.asarray(ema["unet"]["conv_in"]["kernel"])
    np.testing.assert_array_equal(exported.conv_in.weight.detach().numpy(), kernel.transpose(3, 2, 0, 1))


def test_missing_prompts_file_is_a_run_error(tmp_path):
    folder = make_tiny_sd(str(tmp_path / "sd15"))
    with pytest.raises(RunError, match=r"teacher.prompts=.*is not a file"):
        train(_config(folder, str(tmp_path / "none.txt")), str(tmp_path / "run"), print_fn=lambda *_: None)
