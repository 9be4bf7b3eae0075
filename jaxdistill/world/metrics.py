"""Metrics of generated world images, read by the judge (design §8):

- **alignment**: % of images whose kind and colour (as the judge reads them) are the prompt's.
- **diversity**: the spread of what the prompt leaves free — the standard deviation of the
  judge's centre x, centre y and size over the images of each prompt, averaged over the three and
  over prompts — divided by the same spread of real scenes of the same prompts (1 = as diverse as
  the world; mode collapse drives it toward 0).
- **FD**: Fréchet distance (Heusel et al. 2017) between Gaussians fitted to the judge's features
  of the images and of real scenes of the same prompts. Its finite-sample *floor* is the FD
  between two independent real sets of the same size (`real_floor`).
"""

from __future__ import annotations

import numpy as np

from jaxdistill.world import judge as judge_lib
from jaxdistill.world import scene


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a^½ Σ_b Σ_a^½)^½) of features [N, F], in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * np.sum(np.sqrt(np.clip(cross, 0, None))))


def _spread(read: dict, prompts: list[str]) -> float:
    attrs = np.concatenate([read["centre"], read["size"][:, None]], axis=1)
    prompts = np.asarray(prompts)
    per_prompt = [attrs[prompts == p].std(axis=0).mean() for p in np.unique(prompts) if np.sum(prompts == p) > 1]
    if not per_prompt:
        raise ValueError("diversity needs at least two images of some prompt; give each prompt several samples.")
    return float(np.mean(per_prompt))


def world_metrics(judge: judge_lib.Judge, images: np.ndarray, prompts: list[str], reference: scene.Scenes) -> dict:
    """alignment (%), diversity (relative to `reference`) and FD to `reference` (real scenes of
    the same prompts) of images [N, 32, 32, 3] in [-1, 1] generated for `prompts`."""
    images = np.asarray(images)
    if len(prompts) != images.shape[0] or reference.images.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images, {len(prompts)} prompts and {reference.images.shape[0]} reference "
                         "scenes: give one prompt and one reference scene per image.")
    read, ref = judge_lib.readout(judge, images), judge_lib.readout(judge, reference.images)
    pairs = np.asarray([scene.parse_prompt(p) for p in prompts])
    aligned = (read["kind"] == pairs[:, 0]) & (read["colour"] == pairs[:, 1])
    return {"alignment": 100.0 * float(aligned.mean()),
            "diversity": _spread(read, prompts) / _spread(ref, reference.captions),
            "fd": frechet_distance(read["features"], ref["features"])}


def eval_prompts(n: int) -> list[str]:
    """n prompts cycling over every caption of the world."""
    every = scene.all_prompts()
    return [every[i % len(every)] for i in range(n)]


def real_floor(judge: judge_lib.Judge, prompts: list[str], seed: int = 0) -> dict:
    """The metrics of real scenes against other real scenes of the same prompts: what a perfect
    generator scores at this sample size."""
    return world_metrics(judge, scene.scenes_for_prompts(seed + 1, prompts).images, prompts,
                         scene.scenes_for_prompts(seed + 2, prompts))
