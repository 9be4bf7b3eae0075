"""The embedded world: 32×32 RGB images of one coloured shape, with captions (design §8).

Each image holds one object of a `kind` (circle, square, triangle) and a `colour` (six
saturated colours) on a grey background. The caption names kind and colour only ("a red
circle"); the object's centre, size and the background's shade are drawn uniformly and left
free, so a generator can be scored on what the prompt controls (alignment) and on what it
does not (diversity). The world is procedural and unlimited: `sample_scenes(seed, n)` is a
pure function of its arguments (numpy's Philox stream), so any seed reproduces its images.

Images are float32 in [-1, 1], NHWC, as diffusion models see them. Shapes are rendered with
4×4 supersampled coverage (anti-aliased edges).
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

RESOLUTION = 32
KINDS = ("circle", "square", "triangle")
COLOURS = {  # RGB in [0, 1]
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.15, 0.25, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "magenta": (0.90, 0.15, 0.85),
    "cyan": (0.10, 0.85, 0.90),
}
COLOUR_NAMES = tuple(COLOURS)
SIZE_RANGE = (10.0, 20.0)  # the object's extent (diameter / side / base), pixels
SHADE_RANGE = (0.15, 0.55)  # background grey level in [0, 1]
MARGIN = 1.0  # pixels kept between the object and the border
SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class Scenes:
    """A batch of scenes: images [N, 32, 32, 3] in [-1, 1] and the attributes that made them."""

    images: np.ndarray
    kind: np.ndarray  # int [N], index into KINDS
    colour: np.ndarray  # int [N], index into COLOUR_NAMES
    centre: np.ndarray  # float [N, 2], (x, y) in pixels
    size: np.ndarray  # float [N], pixels
    shade: np.ndarray  # float [N], background grey level

    @property
    def captions(self) -> list[str]:
        return [caption(k, c) for k, c in zip(self.kind, self.colour)]


def caption(kind: int, colour: int) -> str:
    return f"a {COLOUR_NAMES[colour]} {KINDS[kind]}"


def all_prompts() -> list[str]:
    """Every caption of the world, kind-major ("a red circle", "a green circle", ...)."""
    return [caption(k, c) for k, c in itertools.product(range(len(KINDS)), range(len(COLOURS)))]


def parse_prompt(prompt: str) -> tuple[int, int]:
    """(kind, colour) indices of a world caption; ValueError naming the prompt otherwise."""
    words = prompt.strip().split()
    if len(words) != 3 or words[0] != "a" or words[1] not in COLOURS or words[2] not in KINDS:
        raise ValueError(f"{prompt!r} is not a caption of the world; captions read 'a <colour> <kind>' with colour in "
                         f"{COLOUR_NAMES} and kind in {KINDS}.")
    return KINDS.index(words[2]), COLOUR_NAMES.index(words[1])


def _coverage(kind: np.ndarray, centre: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Fraction of each pixel inside the object [N, H, W], by supersampling."""
    s = SUPERSAMPLE
    grid = (np.arange(RESOLUTION * s) + 0.5) / s  # sub-pixel centres in pixel units
    x = grid[None, None, :]
    y = grid[None, :, None]
    cx, cy = centre[:, 0, None, None], centre[:, 1, None, None]
    half = size[:, None, None] / 2
    dx, dy = x - cx, y - cy
    circle = dx**2 + dy**2 <= half**2
    square = np.maximum(np.abs(dx), np.abs(dy)) <= half
    # An upright isosceles triangle with base `size` and height `size`, centred on its bounding box.
    frac = (dy + half) / (2 * half)  # 0 at the apex, 1 at the base
    triangle = (frac >= 0) & (frac <= 1) & (np.abs(dx) <= half * frac)
    k = kind[:, None, None]
    inside = np.where(k == 0, circle, np.where(k == 1, square, triangle))
    n = inside.shape[0]
    return inside.reshape(n, RESOLUTION, s, RESOLUTION, s).mean(axis=(2, 4))


def render(kind, colour, centre, size, shade) -> np.ndarray:
    """Images [N, 32, 32, 3] in [-1, 1] of the given attributes (arrays of length N)."""
    kind, colour = np.asarray(kind, np.int64), np.asarray(colour, np.int64)
    centre, size, shade = (np.asarray(a, np.float64) for a in (centre, size, shade))
    alpha = _coverage(kind, centre, size)[..., None]
    rgb = np.asarray([COLOURS[c] for c in COLOUR_NAMES])[colour][:, None, None, :]
    image = alpha * rgb + (1 - alpha) * shade[:, None, None, None]
    return (2 * image - 1).astype(np.float32)


def draw_attributes(rng: np.random.Generator, kind: np.ndarray, colour: np.ndarray) -> Scenes:
    """Scenes of the given kinds and colours with centre, size and shade drawn uniformly."""
    n = kind.shape[0]
    size = rng.uniform(*SIZE_RANGE, n)
    lo = size / 2 + MARGIN
    centre = lo[:, None] + rng.uniform(size=(n, 2)) * (RESOLUTION - 2 * lo)[:, None]
    shade = rng.uniform(*SHADE_RANGE, n)
    return Scenes(render(kind, colour, centre, size, shade), kind, colour, centre, size, shade)


def sample_scenes(seed: int, n: int) -> Scenes:
    """n scenes with kind and colour uniform; deterministic in (seed, n)."""
    rng = np.random.Generator(np.random.Philox(seed))
    kind = rng.integers(0, len(KINDS), n)
    colour = rng.integers(0, len(COLOURS), n)
    return draw_attributes(rng, kind, colour)


def scenes_for_prompts(seed: int, prompts: list[str]) -> Scenes:
    """One scene per prompt (the real-data counterpart of a generator's samples for those prompts)."""
    rng = np.random.Generator(np.random.Philox(seed))
    pairs = np.asarray([parse_prompt(p) for p in prompts]).reshape(-1, 2)
    return draw_attributes(rng, pairs[:, 0], pairs[:, 1])
