"""TPU slices a run can be planned for without their hardware (design §6).

A topology is named as JAX's topology API takes it, `<generation>:<chips per axis>`
(`v5p:4x4x4`, `v5e:16x16`), or as Cloud TPU's accelerator type, `<generation>-<count>`
(`v5p-64`, `v5e-256`; v5p counts TensorCores, two per chip; v5e and v6e count chips).
`devices(name)` returns the slice's abstract devices from `libtpu` (the optional extra
`pip install "jax[tpu]==<installed jax>"`): enough to compile a step for them on a CPU host.

Chip figures are Cloud TPU's published specifications (cloud.google.com/tpu/docs/v5e, v5p,
v6e): peak dense bf16 FLOP/s, HBM capacity and bandwidth, and inter-chip interconnect (ICI)
bandwidth per chip.
"""

from __future__ import annotations

import dataclasses
import math
import re


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str
    bf16_flops: float  # peak dense FLOP/s
    hbm_bytes: int
    hbm_bytes_per_s: float
    ici_bytes_per_s: float  # per chip, all links, both directions
    cores_per_chip: int  # TensorCores counted by the `<generation>-<count>` names
    shapes: tuple  # the slice shapes Cloud TPU offers, smallest first


GiB = 2**30
CHIPS = {
    "v5e": Chip("v5e", 197e12, 16 * GiB, 819e9, 400e9, 1,
                ((1, 1), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16))),
    "v6e": Chip("v6e", 918e12, 32 * GiB, 1638e9, 800e9, 1,
                ((1, 1), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16))),
    "v5p": Chip("v5p", 459e12, 95 * GiB, 2765e9, 600e9, 2,
                ((2, 2, 1), (2, 2, 2), (2, 2, 4), (2, 4, 4), (4, 4, 4), (4, 4, 8), (4, 8, 8), (8, 8, 8),
                 (8, 8, 16), (8, 16, 16), (16, 16, 16), (16, 16, 24))),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    chip: Chip
    shape: tuple

    @property
    def name(self) -> str:
        """JAX's topology name, e.g. 'v5p:2x4x4'."""
        return f"{self.chip.generation}:{'x'.join(map(str, self.shape))}"

    @property
    def num_chips(self) -> int:
        return math.prod(self.shape)

    @property
    def slice_name(self) -> str:
        """Cloud TPU's accelerator type, e.g. 'v5p-64'."""
        return f"{self.chip.generation}-{self.num_chips * self.chip.cores_per_chip}"


def _names(chip: Chip) -> list[str]:
    return [Topology(chip, s).name for s in chip.shapes]


def parse(name: str) -> Topology:
    """The `Topology` a name gives, or an error naming it and the nearest valid choices."""
    m = re.fullmatch(r"\s*(v\d+[a-z]*)\s*([:-])\s*([0-9x]+)\s*", name or "")
    if not m or m.group(1) not in CHIPS:
        raise ValueError(f"topology {name!r} is not a TPU slice jaxdistill knows: use '<generation>:<shape>' or "
                         f"'<generation>-<count>' with a generation in {sorted(CHIPS)}, e.g. v5p:4x4x4, v5p-64, "
                         "v5e:16x16, v5e-256, v6e:16x16.")
    chip = CHIPS[m.group(1)]
    if m.group(2) == "-":
        count = int(m.group(3)) if m.group(3).isdigit() else -1
        by_count = {math.prod(s) * chip.cores_per_chip: s for s in chip.shapes}
        if count not in by_count:
            near = sorted(by_count, key=lambda c: (abs(math.log2(max(c, 1)) - math.log2(max(count, 1))), c))[:3]
            unit = "TensorCores (2 per chip)" if chip.cores_per_chip == 2 else "chips"
            raise ValueError(f"topology {name!r}: {chip.generation} slices come in {sorted(by_count)} {unit}; the "
                             f"nearest are {', '.join(f'{chip.generation}-{c}' for c in near)}.")
        return Topology(chip, by_count[count])
    dims = tuple(int(d) for d in m.group(3).split("x") if d.isdigit())
    if dims not in chip.shapes:
        wanted = math.prod(dims) if dims else 1
        near = sorted(chip.shapes, key=lambda s: (abs(math.log2(math.prod(s)) - math.log2(max(wanted, 1))),
                                                  s != tuple(sorted(dims))))[:3]
        raise ValueError(f"topology {name!r}: {chip.generation} slices have the shapes {_names(chip)}; the nearest "
                         f"are {', '.join(Topology(chip, s).name for s in near)}.")
    return Topology(chip, dims)


def devices(topology: Topology) -> list:
    """The slice's abstract TPU devices (compile only), from libtpu's topology description."""
    try:
        from jax.experimental import topologies

        description = topologies.get_topology_desc(platform="tpu", topology_name=topology.name)
    except Exception as e:  # no libtpu: a RuntimeError or an import error, depending on the JAX version
        why = str(e).splitlines()[0][:200]
        fix = ("libtpu serves one process at a time and another process on this host holds it (its lockfile): "
               "wait for it, or set ALLOW_MULTIPLE_LIBTPU_LOAD=1 to plan beside it (compiling only)" if "lockfile" in why else
               "Planning a TPU run needs the libtpu package matching your JAX: "
               "pip install \"jax[tpu]==$(python -c 'import jax; print(jax.__version__)')\"")
        raise RuntimeError(f"cannot describe TPU topology {topology.name} ({type(e).__name__}: {why}). {fix}") from e
    return list(description.devices)
