"""What a compiled train step costs per device, read from XLA's own analyses, and the step time
a chip's published rates imply (`jaxdistill info`).

- memory: `Compiled.memory_analysis()` — arguments, outputs, temporaries, aliased (donated)
  bytes and generated code per device; the peak is arguments + outputs − aliased + temporaries
  + code.
- FLOPs: `Compiled.cost_analysis()` of the per-device program, which counts a loop body once,
  plus the FLOPs (dots, convolutions, elementwise ops, reductions, as XLA counts them) of the
  other iterations of each `while` loop in the optimised HLO, times its trip count less one
  (`loop_costs`). The critic updates (`lax.scan` over n_critic) and scanned UNet layers
  (`model.scan_layers`) are such loops. XLA sees no FLOPs in a Pallas kernel: the
  splash-attention kernels' matmul FLOPs are counted from their operand shapes (`splash_costs`).
- HBM bytes: jaxdistill's own count, not XLA's: every kernel's operand and result bytes that
  live in HBM, times the trip counts of the loops it runs in. Arrays are counted as TPU layouts
  store them, padded to their tiles. An array in VMEM (memory space 1, where XLA's memory-space
  assignment prefetches operands and keeps results) is not HBM traffic; the async copies and
  slices that move it between HBM and VMEM are, on their HBM side. The splash kernels' re-reads
  of K and V (or Q, dO) per tile are added (`splash_costs`). XLA's own count (every body once,
  logical shapes, every memory space) is reported beside it. The same bytes are filed by kernel
  kind and by the name scope (a critic or generator update) they came from, with the kernels
  that move the most.
- collectives: every all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute
  in the optimised per-device HLO, times the trip counts of the loops it sits in, with the bytes
  one device sends in a ring over its replica group of n devices: all-reduce 2·S·(n−1)/n,
  all-gather S·(n−1)/n (S its result), reduce-scatter S·(n−1), all-to-all S·(n−1)/n,
  collective-permute S. TPU writes a reduce-scatter as a fusion of an `all-reduce-scatter`
  computation (an all-reduce, then the device's shard sliced); it counts as a reduce-scatter.
  TPU also splits a collective it overlaps with compute over several fusions (a start, fused
  continuations, a done), each holding a copy of it with the same channel id: a channel counts
  once in the computation that runs those fusions. Collectives that are not in a fusion count
  one by one: the compiler gives distinct collective-permutes there one channel id.
- step time: compute FLOPs / peak, HBM bytes / bandwidth, ICI bytes / (half the chip's
  bidirectional ICI bandwidth: a ring sends one way on each link it uses). The estimate is
  max(compute, HBM) + ICI (collectives not overlapped: an upper bound for a well-overlapped
  step, a lower bound for one with poor fusion); the largest term is what binds.
"""

from __future__ import annotations

import dataclasses
import math
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


_TILED = re.compile(r"\b([a-z]+\d*[a-z0-9]*)\[([\d,]*)\](?:\{([\d,]*)(?::([^}]*))?\})?")
_TILE = re.compile(r"T\(([\d,]+)\)")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")


def _bytes(type_text: str) -> int:
    """HBM bytes of the arrays in an HLO type as laid out in memory: a TPU layout such as
    `{3,2,1,0:T(8,128)}` stores its minor-most dimensions in tiles of 8 × 128 elements, so they
    are padded to multiples of the tile (a [64, 64, 4] latent with channels minor takes 32× its
    size). An array in another memory space (`S(1)`, TPU's on-chip VMEM, where XLA's memory-space
    assignment prefetches operands; `S(2)`, sync flags) is not in HBM and counts nothing (XLA's GPU
    backend uses memory space 1 only for NCCL user buffers, in HBM but off by default). An array
    without a tiled layout counts its elements."""
    total = 0
    for dtype, dims, minor_to_major, layout in _TILED.findall(type_text):
        space = _MEMORY_SPACE.search(layout)
        if dtype not in DTYPE_BYTES or (space and space.group(1) != "0"):
            continue
        shape = [int(d) for d in dims.split(",") if d]
        order = [int(d) for d in minor_to_major.split(",") if d]
        tile = _TILE.search(layout)
        for dim, size in zip(order, reversed([int(t) for t in tile.group(1).split(",")]) if tile else ()):
            shape[dim] = -(-shape[dim] // size) * size
        total += math.prod(shape) * DTYPE_BYTES[dtype]
    return total


_ARRAY_TYPE = re.compile(r"[a-z]+\d*[a-z0-9]*\[[\d,]*\](?:\{[^}]*\})?")


def _async_copy_traffic(ins, types: dict) -> float:
    """HBM bytes of an async copy or slice between memory spaces (`copy-start`, returning
    (destination, source, context), or `slice-start`, returning ((source,), destination,
    context)): the destination's size, read from the source and written to the destination,
    each where it is in HBM (a prefetch into VMEM reads HBM; an eviction writes it)."""
    arrays = _ARRAY_TYPE.findall(ins.type)
    destination = (arrays[0] if ins.op == "copy-start" else arrays[-2]) if len(arrays) >= 2 else ""
    source = types.get(ins.operands[0], "") if ins.operands else ""
    size = _bytes(_MEMORY_SPACE.sub("", destination))
    return (size if _bytes(source) else 0.0) + _bytes(destination)


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


def _collective(line: str, num_devices: int) -> tuple[str, float] | None:
    """(kind, bytes one device sends) of an HLO line that starts a collective, else None. (Slow
    on long lines: call it for collective instructions only.)"""
    m = _OP.search(line)
    if not m or "-done" in line.split("=")[0]:
        return None
    sizes = _array_bytes(m.group("type"))
    if not sizes:
        return None
    # An async all-gather / collective-permute start returns (operand, result, ...): count the result.
    size = max(sizes) if m.group("start") and m.group("op") in ("all-gather", "collective-permute") else sum(sizes)
    n = max(_group_size(line, num_devices), 1)
    factor = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n, "reduce-scatter": n - 1,
              "all-to-all": (n - 1) / n, "collective-permute": 1.0}[m.group("op")]
    return m.group("op"), size * factor


# ------------------------------------------------------------------ loops in the optimised HLO

# Optimised HLO text names values and computations with a leading %, writes operand types inline
# and parameters in each computation's header; a lowered (unoptimised) module's text has neither.
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) (?:\((.*)\) -> .*)?\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = (.+?) ([a-z][\w\-]*)\((.*)$")
_OPERAND = re.compile(r"%?([A-Za-z_][\w.\-]*)\s*(?:,|$)")
_PARAM = re.compile(r"([\w.\-]+): ([a-z]+\d*[a-z0-9]*\[[\d,]*\])")
_DIMS = re.compile(r"\[([\d,]*)\]")
_CHANNEL = re.compile(r"\bchannel_id=(\d+)")
_CALLS = re.compile(r"\bcalls=%?([\w.\-]+)")  # the computation a fusion or async wrapper runs
# Instructions that move no data of their own (views, tuples, control flow, parameters).
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call", "conditional",
               "after-all", "partition-id", "replica-id", "opt-barrier"}


@dataclasses.dataclass
class _Instr:
    name: str
    type: str
    op: str
    operands: list
    attrs: str
    text: str  # what is between the op's parentheses
    line: str
    root: bool


def _split_operands(rest: str) -> tuple[str, str]:
    depth = 1
    for i, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return rest[:i], rest[i + 1:]
    return rest, ""


def _parse(hlo_text: str) -> tuple[dict, str]:
    """({computation: (instructions, {value name: type})}, the entry computation's name)."""
    comps, entry, current = {}, "", None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = ([], dict((k, v) for k, v in _PARAM.findall(header.group(3) or "")))
            comps[header.group(2)] = current
            entry = header.group(2) if header.group(1) else entry
            continue
        m = _INSTR.match(line) if current is not None else None
        if m:
            operands, attrs = _split_operands(m.group(5))
            current[0].append(_Instr(m.group(2), m.group(3), m.group(4), _OPERAND.findall(operands), attrs,
                                     operands, line, bool(m.group(1))))
            current[1][m.group(2)] = m.group(3)
        elif line.strip() == "}":
            current = None
        elif current is not None and current[0]:  # an attribute that spans lines (a kernel's metadata)
            current[0][-1].attrs += "\n" + line
    return comps, entry


def _shape(type_text: str) -> list[int]:
    m = _DIMS.search(type_text)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


# Elementwise ops XLA's cost analysis counts as one FLOP per result element (transcendentals,
# such as exp and tanh, are a separate count there and here count nothing).
_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "compare", "select",
                "clamp", "sign", "floor", "ceil", "round-nearest-even", "round-nearest-afz", "remainder", "power",
                "and", "or", "xor", "not"}


def _flops(ins: _Instr, types: dict) -> float:
    """FLOPs of one instruction as XLA's cost analysis counts them: 2 per multiply-add of a dot
    or convolution, 1 per result element of an elementwise op, 1 per reduced element."""
    if ins.op in _ELEMENTWISE:
        return float(math.prod(_shape(ins.type)))
    if ins.op == "reduce" and ins.operands:
        return float(math.prod(_shape(types.get(ins.operands[0], ""))))
    if ins.op not in ("dot", "convolution") or len(ins.operands) < 2:
        return 0.0
    out = math.prod(_shape(ins.type))
    if ins.op == "dot":
        lhs = _shape(types.get(ins.operands[0], ""))
        dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
        contracted = [lhs[int(d)] for d in dims.group(1).split(",") if d] if dims and lhs else []
        return 2.0 * out * math.prod(contracted)
    return _conv_flops(ins, types)


def _window(attrs: str, key: str, rank: int, default: int) -> list[int]:
    m = re.search(rf"\b{key}=([\dx_-]+)", attrs)
    return [int(v) for v in m.group(1).split("x")] if m else [default] * rank


def _conv_flops(ins: _Instr, types: dict) -> float:
    """A convolution's FLOPs as XLA's cost analysis counts them: 2 × batch × output features ×
    input features per group × the (output, kernel) position pairs of each spatial dimension that
    land on a real input element, not on padding or a dilation hole. (TPU HLO writes a batched
    matmul as a convolution whose batch dimensions are dilated spatial ones: each output position
    then meets one kernel position, and a product of window sizes would overcount.)"""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", ins.attrs)
    lhs, kernel, out = (_shape(types.get(ins.operands[0], "")), _shape(types.get(ins.operands[1], "")),
                        _shape(ins.type))
    if not labels or not lhs or not kernel or not out:
        return 0.0
    lhs_l, kernel_l, out_l = labels.groups()
    spatial = sorted(c for c in out_l if c.isdigit())
    window = re.search(r"window=\{([^}]*)\}", ins.attrs)
    attrs, rank = (window.group(1) if window else ""), len(spatial)
    size, stride = _window(attrs, "size", rank, 1), _window(attrs, "stride", rank, 1)
    lhs_dilate, rhs_dilate = _window(attrs, "lhs_dilate", rank, 1), _window(attrs, "rhs_dilate", rank, 1)
    pads = re.search(r"\bpad=([\dx_-]+)", attrs)
    low = [int(p.split("_")[0]) for p in pads.group(1).split("x")] if pads else [0] * rank
    pairs = 1
    for d, c in enumerate(spatial):
        n_in, n_out = lhs[lhs_l.index(c)], out[out_l.index(c)]
        span = (n_in - 1) * lhs_dilate[d]
        pairs *= sum(1 for o in range(n_out) for k in range(size[d])
                     if 0 <= (p := o * stride[d] + k * rhs_dilate[d] - low[d]) <= span and p % lhs_dilate[d] == 0)
    return 2.0 * out[out_l.index("b")] * out[out_l.index("f")] * kernel[kernel_l.index("i")] * pairs


def _fusion_traffic(ins: _Instr, comps: dict, types: dict, charged: set) -> float:
    """Bytes a fusion reads and writes, as XLA counts them: an operand it only dynamic-slices
    costs the slices, a buffer it dynamic-update-slices in place costs the update (a scan's
    stacked inputs and outputs), anything else its whole size.

    A collective with a channel id that TPU splits over a start, fused continuations and a done
    (`loop_costs`) moves its operand and result once: in the first of those fusions, whose
    channel is not yet in `charged` (the channels charged in the computation so far; updated).
    The others pass the collective's buffers through and cost only their own work."""
    callee = _CALLS.search(ins.attrs)
    inner, inner_types = comps.get(callee.group(1), ([], {})) if callee else ([], {})
    if not inner:
        return _bytes(ins.type) + sum(_bytes(types.get(o, "")) for o in ins.operands)
    by_name = {i.name: i for i in inner}
    users = {}
    for i in inner:
        for o in i.operands:
            users.setdefault(o, []).append(i)
    # The channel collectives in it, and TPU's AsyncCollectiveStart custom-calls that wrap them.
    channel = {i.name: m.group(1) for i in inner
               if i.op.startswith(COLLECTIVES) and (m := _CHANNEL.search(i.attrs))}
    channel.update({i.name: channel[i.operands[0]] for i in inner
                    if i.op == "custom-call" and i.operands and i.operands[0] in channel})
    first = set(channel.values()) - charged
    charged |= first
    roots = [i for i in inner if i.root]

    def uses(name: str) -> list:
        """(user, the name it uses: `name` or a bitcast of it)."""
        out = []
        for u in users.get(name, []):
            out += uses(u.name) if u.op == "bitcast" else [(u, name)]
        return out

    def read(param: _Instr) -> float:
        found = uses(param.name)
        if found and all(u.op in ("dynamic-slice", "dynamic-update-slice") and u.operands[0] == via for u, via in found):
            return sum(_bytes(u.type) if u.op == "dynamic-slice" else _bytes(inner_types.get(u.operands[1], ""))
                       for u, _ in found)
        if channel and found and all(u.name in channel or (u.root and u.op == "tuple") for u, _ in found):
            # a collective's operand, or a buffer passed through
            return _bytes(param.type) if any(channel.get(u.name) in first for u, _ in found) else 0.0
        return _bytes(param.type)

    def written(i: _Instr) -> float:
        while i.op == "bitcast" and i.operands and i.operands[0] in by_name:
            i = by_name[i.operands[0]]
        if i.op == "dynamic-update-slice":
            return _bytes(inner_types.get(i.operands[1], ""))
        if i.op == "tuple":
            return sum(written(by_name[o]) if o in by_name else 0.0 for o in i.operands)
        if channel and i.op == "parameter":  # a buffer passed through to the result
            return 0.0
        if i.name in channel:
            return _collective_result_bytes(i, by_name) if channel[i.name] in first else 0.0
        return _bytes(i.type)

    return (sum(read(i) for i in inner if i.op == "parameter")
            + (written(roots[0]) if roots else _bytes(ins.type)))


def _collective_result_bytes(i: _Instr, by_name: dict) -> float:
    """The bytes a collective (or the AsyncCollectiveStart that wraps it) writes: its result, in
    the memory space the wrapper's result names where there is one (the collective inside may
    carry no memory space)."""
    if i.op != "custom-call":
        return _bytes(i.type)
    shape = _DIMS.search(by_name[i.operands[0]].type).group(0)
    arrays = [a for a in _ARRAY_TYPE.findall(i.type) if _DIMS.search(a).group(0) == shape]
    return _bytes(arrays[-1]) if arrays else _bytes(by_name[i.operands[0]].type)


def _trip_count(ins: _Instr, comps: dict) -> int | None:
    """A while loop's trip count: XLA's `known_trip_count`, else the one integer constant its
    condition compares the counter with (JAX's scans and fori_loops count from 0 by 1)."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', ins.attrs)
    if known:
        return int(known.group(1))
    cond = re.search(r"condition=%?([\w.\-]+)", ins.attrs)
    consts, todo = set(), [cond.group(1)] if cond else []
    while todo:
        for c in comps.get(todo.pop(), ([], {}))[0]:
            if c.op == "constant" and re.fullmatch(r"[su]\d+\[\]\S*", c.type):
                consts.add(int(c.text))
            todo += _CALLS.findall(c.attrs)
    return consts.pop() if len(consts) == 1 else None


@dataclasses.dataclass
class LoopCosts:
    """What XLA's cost analysis leaves out: the iterations of a loop after the first (it counts
    a body once), the splash-attention kernels (it sees no FLOPs in a Pallas kernel) and which
    memory a kernel's arrays are in; and jaxdistill's own count of the HBM traffic."""
    flops: float  # FLOPs (as XLA counts them) of every loop iteration after the first
    hbm_bytes: float  # HBM bytes every kernel reads and writes (`_bytes`), every loop iteration counted
    collectives: dict  # bytes sent per device, by kind, every iteration counted
    unknown_trip_counts: int  # loops whose trip count could not be read, counted once
    splash_flops: float = 0.0  # the splash kernels' FLOPs, every call counted (`splash_costs`)
    splash_bytes: float = 0.0  # their HBM re-reads of K, V (or Q, dO) beyond one read of each operand
    splash_calls: float = 0.0  # splash kernel calls, every iteration counted
    traffic_by_kind: dict = dataclasses.field(default_factory=dict)  # kernel bytes by `_kernel_kind`, every call
    top_kernels: list = dataclasses.field(default_factory=list)  # `TrafficKernel`s with the most bytes, every call
    traffic_by_scope: dict = dataclasses.field(default_factory=dict)  # kernel bytes by the `scopes` they came from


@dataclasses.dataclass
class TrafficKernel:
    """One kernel of the optimised HLO and the HBM bytes it moves in a step."""
    bytes: float  # operand + result bytes (a splash kernel's re-reads included), times `calls`
    calls: int  # how often it runs in a step: the trip counts of the loops it sits in
    kind: str  # `_kernel_kind`
    type: str  # its result type
    op_name: str  # the JAX operation it came from (the HLO's metadata)


_SPLASH = re.compile(r"splash_mq?h?a_(fwd|dq|dkv)")
_FLOATS = ("bf16[", "f16[", "f32[")


def _tile(attrs: str, key: str) -> int:
    """A splash kernel's tile size from its `xprof_metadata` (jax writes its BlockSizes there),
    else the kernel's default, 128."""
    m = re.search(rf'\b{key}\\?"\s*:\s*(\d+)', attrs)
    return int(m.group(1)) if m else 128


def splash_costs(ins: _Instr, types: dict) -> tuple[float, float] | None:
    """(FLOPs, HBM bytes re-read) of one call of a Pallas splash-attention kernel
    (`jax.experimental.pallas.ops.tpu.splash_attention`: a `tpu_custom_call` named
    splash_mha_fwd…, …_dq… or …_dkv…), else None. XLA's cost analysis counts such a call's
    operands and results once and none of its FLOPs.

    With q [b, H, Lq, D] and k [b, H, Lk, D] (its first two rank-4 operands), each kernel does
    matmuls of 2·b·H·Lq·Lk·D FLOPs: the forward 2 (q·kᵀ, p·v), the dq kernel 3 (q·kᵀ and dO·vᵀ
    again, then dS·k) and the dkv kernel 2 + one per gradient it writes (dk, dv, and dq when
    fused). That is a full mask, as jaxdistill's UNets use; a causal one skips about half. The
    forward and dq kernels read all of k and v once per query tile, the dkv kernel q and dO once
    per key tile (tiles from the kernel's metadata), so each re-reads those Lq/bq − 1 or
    Lk/bk − 1 more times (dO taken as q's size). With one example per device the compiler drops
    the batch dimension: q and k are then [H, L, D], b = 1 (they are told from the masks, also of
    rank 3, by their float dtype)."""
    kind = _SPLASH.search(ins.name) if ins.op == "custom-call" and "tpu_custom_call" in ins.attrs else None
    arrays = [t for t in (types.get(o, "") for o in ins.operands)
              if t.startswith(_FLOATS) and len(_shape(t)) in (3, 4)] if kind else []
    if len(arrays) < 2:
        return None
    q, k = _shape(arrays[0]), _shape(arrays[1])
    (b, h, lq, d), lk = [1] * (4 - len(q)) + q, k[-2]
    # the gradients a dkv kernel writes: dk, dv and, when fused, dq (the other results are scratch)
    grads = sum(1 for t in re.findall(r"[a-z]+\d*\[[\d,]*\]", ins.type) if _shape(t) in (q, k))
    phase = kind.group(1)
    matmuls = {"fwd": 2, "dq": 3, "dkv": 2 + grads}[phase]
    if phase == "dkv":
        reread = (lk // _tile(ins.attrs, "block_kv_dkv") - 1) * 2 * _bytes(arrays[0])
    else:
        reread = (lq // _tile(ins.attrs, "block_q" if phase == "fwd" else "block_q_dq") - 1) * 2 * _bytes(arrays[1])
    return 2.0 * matmuls * b * h * lq * lk * d, float(max(reread, 0))


KERNEL_KINDS = ("matmuls and convolutions", "splash attention", "elementwise", "reductions", "slices and updates",
                "copies and transposes", "collectives", "other")


def _kernel_kind(ins: _Instr, comps: dict) -> str:
    """Which of `KERNEL_KINDS` a kernel is, from its op or, for a fusion, the ops fused in it."""
    callee = _CALLS.search(ins.attrs) if ins.op == "fusion" else None
    ops = {i.op for i in comps.get(callee.group(1), ([], {}))[0]} if callee else {ins.op}
    if ops & {"convolution", "dot"}:  # a matmul TPU fused with a collective's continuation too
        return "matmuls and convolutions"
    if ins.op.startswith(COLLECTIVES) or ops & set(COLLECTIVES):
        return "collectives"
    if ins.op == "custom-call":
        return "splash attention" if _SPLASH.search(ins.name) else "other"
    if ops & {"dynamic-update-slice", "dynamic-slice", "slice", "concatenate", "pad", "gather", "scatter"}:
        return "slices and updates"
    if ops & {"reduce", "reduce-window", "select-and-scatter"}:
        return "reductions"
    if ops <= {"parameter", "copy", "transpose", "bitcast", "tuple", "get-tuple-element", "broadcast", "reshape"}:
        return "copies and transposes"
    return "elementwise"


def loop_costs(hlo_text: str, num_devices: int, top: int = 10, scopes: tuple = ()) -> LoopCosts:
    """`LoopCosts` of an optimised per-device HLO text: each computation's dots, convolutions,
    kernels, collectives and splash-attention kernels, summed over the call graph (fusions,
    calls, async wrappers and while bodies), once with every loop run once and once with its
    trip count. Every kernel's bytes, times the trip counts of the loops it sits in, are also
    summed by `_kernel_kind` (`traffic_by_kind`) and by the first of the name `scopes` in the JAX
    operation it came from, "other" if none (`traffic_by_scope`); the `top` kernels with the most
    bytes are listed."""
    comps, entry = _parse(hlo_text)
    unknown = set()
    # computation: (FLOPs, what is counted on every call: the bytes of collectives outside
    # `channels` by kind and the splash kernels' costs, [(callee, kind, trip count)]);
    # kernels: computation -> [(HBM bytes, kernel)]
    own, kernels = {}, {}
    # fusion computation: {channel id: (kind, bytes)} of its collectives that carry a channel id.
    # A channel id names one collective among a computation's fusions (TPU splits an async
    # collective over a start, fused continuations and a done, each holding a copy), but not
    # among the instructions of a computation itself: there the TPU compiler gives distinct
    # collective-permutes one channel id, and each counts.
    channels = {name: {} for name in comps}
    fused = set(_CALLS.findall(hlo_text))
    for name, (instrs, types) in comps.items():
        flops, calls, kernels[name], charged = 0.0, [], [], set()
        counted = dict.fromkeys(COLLECTIVES + ("splash_flops", "splash_bytes", "splash_calls"), 0.0)
        for ins in instrs:
            flops += _flops(ins, types)
            found = _collective(ins.line, num_devices) if ins.op.startswith(COLLECTIVES) else None
            channel = _CHANNEL.search(ins.attrs) if found and name in fused else None
            if channel:
                channels[name][channel.group(1)] = found
            elif found:
                counted[found[0]] += found[1]
            splash = splash_costs(ins, types)
            if splash:
                counted["splash_flops"] += splash[0]
                counted["splash_bytes"] += splash[1]
                counted["splash_calls"] += 1
            moved = 0.0
            if ins.op == "fusion":
                moved = _fusion_traffic(ins, comps, types, charged)
            elif ins.op in ("copy-start", "slice-start"):
                moved = _async_copy_traffic(ins, types)
            elif ins.op not in _NO_TRAFFIC and not ins.op.endswith("-done"):
                moved = _bytes(ins.type) + sum(_bytes(types.get(o, "")) for o in ins.operands)
            if moved or splash:
                kernels[name].append((moved + (splash[1] if splash else 0.0), ins))
            if ins.op == "while":
                body = re.search(r"body=%?([\w.\-]+)", ins.attrs)
                n = _trip_count(ins, comps)
                if n is None:
                    unknown.add(ins.name)
                calls += [(body.group(1), "loop", n or 1)] if body else []
            elif ins.op in ("call", "conditional"):
                callees = re.findall(r"(?:to_apply|true_computation|false_computation)=%?([\w.\-]+)", ins.attrs)
                branches = re.search(r"branch_computations=\{([^}]*)\}", ins.attrs)
                callees += re.findall(r"%?([\w.\-]+)", branches.group(1) if branches else "")
                calls += [(c, "call", 1) for c in callees]
            else:  # fusions and async wrappers: their insides are one kernel, counted above
                calls += [(c, "kernel", 1) for c in _CALLS.findall(ins.attrs)]
        if name.startswith("all-reduce-scatter"):  # TPU's reduce-scatter: an all-reduce, then the shard sliced
            counted["reduce-scatter"] += counted["all-reduce"] / 2  # a ring reduce-scatter sends half
            counted["all-reduce"] = 0.0
            channels[name] = {c: ("reduce-scatter", b / 2) if k == "all-reduce" else (k, b)
                              for c, (k, b) in channels[name].items()}
        own[name] = (flops, counted, calls)

    inside = {}

    def kernel_channels(name: str) -> dict:
        """The channel collectives of a computation and of the kernels it calls, each channel once."""
        if name not in inside:
            inside[name] = {}  # a cycle (none in valid HLO) adds nothing
            found = dict(channels.get(name, {}))
            for callee, kind, _ in own.get(name, (0.0, {}, []))[2]:
                if kind == "kernel":
                    found.update(kernel_channels(callee))
            inside[name] = found
        return inside[name]

    memo = {}

    def total(name: str, trips: bool) -> tuple[float, dict]:
        key = (name, trips)
        if key not in memo:
            memo[key] = (0.0, {})  # a cycle (none in valid HLO) adds nothing
            flops, counted, calls = own.get(name, (0.0, {}, []))
            counted = dict(counted)
            for callee, kind, n in calls:
                times = n if trips and kind == "loop" else 1
                f, c = total(callee, trips)
                flops += times * f
                for k, v in c.items():
                    counted[k] += times * v
            memo[key] = (flops, counted)
        return memo[key]

    sent_memo = {}

    def channel_sent(name: str) -> dict:
        """Bytes sent by the channel collectives of a computation, every loop iteration counted: the
        kernels' (`kernel_channels`) and those of the loops and calls it runs."""
        if name not in sent_memo:
            sent_memo[name] = {}  # a cycle (none in valid HLO) adds nothing
            sent = dict.fromkeys(COLLECTIVES, 0.0)
            for kind, b in kernel_channels(name).values():
                sent[kind] += b
            for callee, kind, n in own.get(name, (0.0, {}, []))[2]:
                if kind != "kernel":
                    for k, b in channel_sent(callee).items():
                        sent[k] += n * b
            sent_memo[name] = sent
        return sent_memo[name]

    runs = {}  # computation: how often it runs in a step (kernels' insides are counted at the kernel)

    def visit(name: str, times: int) -> None:
        runs[name] = runs.get(name, 0) + times
        for callee, kind, n in own.get(name, (0.0, {}, []))[2]:
            if kind != "kernel":
                visit(callee, times * (n if kind == "loop" else 1))

    visit(entry, 1)
    by_kind, by_scope, found = dict.fromkeys(KERNEL_KINDS, 0.0), dict.fromkeys(scopes + ("other",), 0.0), []
    scope = re.compile(r"(?:^|/)(" + "|".join(map(re.escape, scopes)) + r")(?:/|$)") if scopes else None
    for name, times in runs.items():
        for moved, ins in kernels[name]:
            kind = _kernel_kind(ins, comps)
            by_kind[kind] += times * moved
            op_name = re.search(r'op_name="([^"]*)"', ins.attrs)
            op_name = op_name.group(1) if op_name else ins.name
            within = scope.search(op_name) if scope else None
            by_scope[within.group(1) if within else "other"] += times * moved
            found.append(TrafficKernel(times * moved, times, kind, ins.type.split("{")[0], op_name))
    found.sort(key=lambda k: -k.bytes)

    once, full = total(entry, False), total(entry, True)
    every, sent = full[1], channel_sent(entry)
    return LoopCosts(flops=full[0] - once[0], hbm_bytes=sum(by_kind.values()),
                     collectives={k: every.get(k, 0.0) + sent[k] for k in COLLECTIVES},
                     unknown_trip_counts=len(unknown),
                     splash_flops=every.get("splash_flops", 0.0), splash_bytes=every.get("splash_bytes", 0.0),
                     splash_calls=every.get("splash_calls", 0.0), traffic_by_kind=by_kind, top_kernels=found[:top],
                     traffic_by_scope=by_scope)


@dataclasses.dataclass
class StepCost:
    flops: float
    bytes_accessed: float  # HBM bytes: jaxdistill's count (`LoopCosts.hbm_bytes`)
    memory: dict  # per device: argument, output, temp, alias, generated_code
    collectives: dict  # bytes sent per device, by kind
    unknown_trip_counts: int = 0  # loops counted once because their trip count was not read
    splash_calls: int = 0  # splash-attention kernel calls, their FLOPs counted by `splash_costs`
    splash_flops: float = 0.0  # of `flops`
    traffic_by_kind: dict = dataclasses.field(default_factory=dict)  # jaxdistill's own count (`loop_costs`)
    top_kernels: list = dataclasses.field(default_factory=list)  # `TrafficKernel`s
    traffic_by_scope: dict = dataclasses.field(default_factory=dict)  # jaxdistill's own count (`loop_costs`)
    xla_flops: float = 0.0  # of `flops`: XLA's cost analysis (every loop body once, no Pallas kernel)
    xla_bytes_accessed: float = 0.0  # XLA's count of the bytes (every loop body once, every memory, no tiles)

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


def _xla_cost(program) -> dict:
    """XLA's cost analysis of a lowered or compiled program (one dict; some JAX versions wrap it in a list)."""
    cost = program.cost_analysis()
    return cost[0] if isinstance(cost, (list, tuple)) else cost


def step_cost(compiled, num_devices: int, scopes: tuple = ()) -> StepCost:
    """The `StepCost` of a compiled (per-device, SPMD-partitioned) step, its HBM traffic also
    filed under the name `scopes` its kernels came from."""
    mem = compiled.memory_analysis()
    memory = {name: int(getattr(mem, f"{name}_size_in_bytes"))
              for name in ("argument", "output", "temp", "alias", "generated_code")}
    return hlo_step_cost(compiled.as_text(), num_devices, _xla_cost(compiled), memory, scopes)


def hlo_step_cost(hlo_text: str, num_devices: int, xla_cost: dict, memory: dict, scopes: tuple = ()) -> StepCost:
    """The `StepCost` of a step's optimised HLO text, given XLA's cost analysis of it (its
    'flops' and 'bytes accessed') and its memory analysis: FLOPs are XLA's plus the loop
    iterations and splash kernels it does not see; HBM bytes are jaxdistill's count of every
    kernel (`loop_costs`). From a saved HLO (`info --hlo_out`) this re-reads a step without
    compiling it."""
    loops = loop_costs(hlo_text, num_devices, scopes=scopes)
    xla_flops = float(xla_cost.get("flops", 0.0))
    return StepCost(flops=xla_flops + loops.flops + loops.splash_flops, bytes_accessed=loops.hbm_bytes,
                    memory=memory, collectives=loops.collectives, unknown_trip_counts=loops.unknown_trip_counts,
                    splash_calls=int(loops.splash_calls), splash_flops=loops.splash_flops,
                    traffic_by_kind=loops.traffic_by_kind, top_kernels=loops.top_kernels,
                    traffic_by_scope=loops.traffic_by_scope, xla_flops=xla_flops,
                    xla_bytes_accessed=float(xla_cost.get("bytes accessed", 0.0)))


def program_flops(lowered) -> float:
    """The FLOPs of a lowered, not yet optimised program, every loop iteration counted: XLA's
    cost analysis of the module as JAX wrote it (each loop body once) plus `loop_costs`' count of
    the iterations after the first. It does not depend on the backend's kernels (cuBLAS and cuDNN
    custom calls, Pallas): lowered with XLA attention and no rematerialisation, it is the model
    FLOPs that model FLOPs utilisation divides by (`experiments/bench_step.py`)."""
    return float(_xla_cost(lowered).get("flops", 0.0)) + loop_costs(lowered.as_text(dialect="hlo"), 1).flops


def hbm_shortfall(error: Exception) -> tuple[int, int] | None:
    """(bytes needed, bytes available) from XLA's out-of-memory compile error, if it is one."""
    text = str(error)
    m = (re.search(r"required for [^(]*\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)", text)
         or re.search(r"Used ([\d.]+)([KMGT]?)(?:i?B)? of ([\d.]+)([KMGT]?)(?:i?B)? hbm", text))
    if not m:
        return None
    unit = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    return int(float(m.group(1)) * unit[m.group(2)]), int(float(m.group(3)) * unit[m.group(4)])
