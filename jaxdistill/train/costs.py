"""What a compiled train step costs per device, read from XLA's own analyses, and the step time
a chip's published rates imply (`jaxdistill info`).

- memory: `Compiled.memory_analysis()` — arguments, outputs, temporaries, aliased (donated)
  bytes and generated code per device; the peak is arguments + outputs − aliased + temporaries
  + code.
- FLOPs and bytes accessed: `Compiled.cost_analysis()` of the per-device program (XLA counts a
  loop body once; the planner compiles the critic loop unrolled for that reason).
- collectives: every all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute
  in the optimised per-device HLO, with the bytes one device sends in a ring over its replica
  group of n devices: all-reduce 2·S·(n−1)/n, all-gather S·(n−1)/n (S its result),
  reduce-scatter S·(n−1), all-to-all S·(n−1)/n, collective-permute S.
- step time: compute FLOPs / peak, HBM bytes / bandwidth, ICI bytes / (half the chip's
  bidirectional ICI bandwidth: a ring sends one way on each link it uses). The estimate is
  max(compute, HBM) + ICI (collectives not overlapped: an upper bound for a well-overlapped
  step, a lower bound for one with poor fusion); the largest term is what binds.
"""

from __future__ import annotations

import dataclasses
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
               "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*(?P<type>\S.*?)\s+(?P<op>all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
                 r"(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\]")


def _array_bytes(type_text: str) -> list[int]:
    out = []
    for dtype, dims in _ARRAY.findall(type_text):
        if dtype in DTYPE_BYTES:
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            out.append(n * DTYPE_BYTES[dtype])
    return out


def _group_size(line: str, num_devices: int) -> int:
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
    if iota:
        return int(iota.group(2))
    named = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)  # mesh['a'=4,'b'=2] {'a'}
    if named:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", named.group(1))}
        n = 1
        for axis in re.findall(r"'([^']+)'", named.group(2)):
            n *= sizes.get(axis, 1)
        return n
    listed = re.search(r"replica_groups=\{\{([\d,]+)\}", line)
    if listed:
        return len(listed.group(1).split(","))
    pairs = re.search(r"source_target_pairs=", line)
    return 2 if pairs else num_devices


def collective_bytes(hlo_text: str, num_devices: int) -> dict[str, float]:
    """{kind: bytes one device sends} over the optimised HLO of a per-device program."""
    sent = {k: 0.0 for k in COLLECTIVES}
    for line in hlo_text.splitlines():
        m = _OP.search(line)
        if not m or "-done" in line.split("=")[0]:
            continue
        sizes = _array_bytes(m.group("type"))
        if not sizes:
            continue
        # An async all-gather / collective-permute start returns (operand, result, ...): count the result.
        size = max(sizes) if m.group("start") and m.group("op") in ("all-gather", "collective-permute") else sum(sizes)
        n = max(_group_size(line, num_devices), 1)
        factor = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n, "reduce-scatter": n - 1,
                  "all-to-all": (n - 1) / n, "collective-permute": 1.0}[m.group("op")]
        sent[m.group("op")] += size * factor
    return sent


@dataclasses.dataclass
class StepCost:
    flops: float
    bytes_accessed: float
    memory: dict  # per device: argument, output, temp, alias, generated_code
    collectives: dict  # bytes sent per device, by kind

    @property
    def peak_bytes(self) -> int:
        m = self.memory
        return m["argument"] + m["output"] - m["alias"] + m["temp"] + m["generated_code"]

    def times(self, chip) -> dict:
        """Seconds per step of each roofline term on `chip` (a `topology.Chip`), the estimate and what binds."""
        terms = {"compute": self.flops / chip.bf16_flops, "hbm": self.bytes_accessed / chip.hbm_bytes_per_s,
                 "ici": sum(self.collectives.values()) / (chip.ici_bytes_per_s / 2)}
        return {**terms, "estimate": max(terms["compute"], terms["hbm"]) + terms["ici"],
                "binds": max(terms, key=terms.get)}


def step_cost(compiled, num_devices: int) -> StepCost:
    """The `StepCost` of a compiled (per-device, SPMD-partitioned) step."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    memory = {name: int(getattr(mem, f"{name}_size_in_bytes"))
              for name in ("argument", "output", "temp", "alias", "generated_code")}
    return StepCost(flops=float(cost.get("flops", 0.0)), bytes_accessed=float(cost.get("bytes accessed", 0.0)),
                    memory=memory, collectives=collective_bytes(compiled.as_text(), num_devices))


def hbm_shortfall(error: Exception) -> tuple[int, int] | None:
    """(bytes needed, bytes available) from XLA's out-of-memory compile error, if it is one."""
    text = str(error)
    m = (re.search(r"required for [^(]*\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)", text)
         or re.search(r"Used ([\d.]+)([KMGT]?)(?:i?B)? of ([\d.]+)([KMGT]?)(?:i?B)? hbm", text))
    if not m:
        return None
    unit = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return int(float(m.group(1)) * unit[m.group(2)]), int(float(m.group(3)) * unit[m.group(4)])
