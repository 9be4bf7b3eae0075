"""Every recipe in configs/ builds: its get_config() (and :tiny) resolves to a valid MethodSpec."""

import glob
import importlib.util
import os

import pytest

from jaxdistill.recipes import build_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


def _load(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p)[:-3])
def test_recipe_resolves_and_documents_its_command(path):
    module = _load(path)
    doc = module.__doc__
    assert f"--config configs/{os.path.basename(path)}" in doc and "Cost:" in doc and ":tiny" in doc
    for variant in ("", "tiny"):
        config = module.get_config(variant)
        if "method" not in config:  # the world's teacher and judge training configs
            assert config.train.steps > 0
            continue
        spec = build_spec(config)
        assert spec.name == config.method.name
        if config.method.guidance:
            assert spec.guidance.cfg_teacher == {"sid_lsg": config.method.kappa, "dmd2": config.method.kappa}.get(
                config.method.guidance, 1.0)
    with pytest.raises(ValueError, match="unknown config variant"):
        module.get_config("huge")


def test_sd_recipes_keep_the_official_values():
    sid_lsg = build_spec(_load(os.path.join(ROOT, "configs", "sid_lsg_sd15.py")).get_config())
    assert (sid_lsg.kernel_kwargs["alpha"], sid_lsg.gen_lr, sid_lsg.guidance.cfg_fake_train) == (1.0, 1e-6, 1.5)
    assert sid_lsg.guidance.prompt_dropout == 0.1 and sid_lsg.gen_noise[0] == "ddpm"
    dmd2 = build_spec(_load(os.path.join(ROOT, "configs", "dmd2_sdxl.py")).get_config())
    assert (dmd2.n_critic, dmd2.gen_lr, dmd2.guidance.cfg_teacher, dmd2.guidance.cfg_fake_eval) == (5, 5e-7, 8.0, 1.0)
    assert dmd2.order == "generator_first" and dmd2.sigma_ladder == (1.16058,) and dmd2.gen_noise[0] == "ddpm"
