"""PyTorch-layout weights <-> Flax NNX modules, through safetensors only (design §6-7).

The NNX modules of `jaxdistill.models` mirror the diffusers / transformers module trees, so a
parameter's path in the module *is* its PyTorch state-dict key (`down_blocks.0.resnets.1.conv1`
+ `.weight`); only the leaf layout differs, and it follows from the owning layer's type:

    nnx.Linear     kernel [in, out]          <-> weight [out, in]              (transpose)
    nnx.Conv       kernel [kh, kw, in, out]  <-> weight [out, in, kh, kw]
    nnx.LayerNorm, nnx.GroupNorm   scale     <-> weight
    nnx.Embed      embedding                 <-> weight
    anything else  same name, same layout

Loading starts from an *abstract* module (`nnx.eval_shape`): each tensor is read lazily from
its memory-mapped file, converted on the host, checked against the abstract shape, cast to the
requested dtype and placed directly onto its target sharding — no random initialisation and no
full host copy of the model. Missing, unexpected and mis-shaped tensors are errors that name
the file and key. Pickle checkpoints (`.bin`, `.ckpt`, `.pt`) are refused.

The safetensors format is read and written here directly (an 8-byte header length, a JSON
header, raw little-endian buffers), which covers bfloat16 through `ml_dtypes` on the host.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import struct
from typing import Any, Callable, Iterable, Mapping

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")


class WeightsError(ValueError):
    """Weights that cannot be loaded as asked; the message names the file and key."""


# ----------------------------------------------------------------------------- safetensors files


def read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """({key: memory-mapped array}, metadata) of one `.safetensors` file; nothing is copied."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e}).") from e
    metadata = header.pop("__metadata__", {}) or {}
    size = os.path.getsize(path) - 8 - n
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if header and size > 0 else None
    tensors = {}
    for key, info in header.items():
        if info["dtype"] not in DTYPES:
            raise WeightsError(f"{path}: tensor {key!r} has dtype {info['dtype']}, which jaxdistill does not read.")
        dtype, (start, end) = DTYPES[info["dtype"]], info["data_offsets"]
        nbytes = int(np.prod(info["shape"], dtype=np.int64)) * dtype.itemsize
        if end - start != nbytes or end > (0 if data is None else data.size):
            raise WeightsError(f"{path}: tensor {key!r} ({info['dtype']} {info['shape']}) has byte range "
                               f"[{start}, {end}) that does not fit it or the file; the file is truncated or corrupt.")
        tensors[key] = data[start:end].view(dtype).reshape(info["shape"]) if nbytes else np.zeros(info["shape"], dtype)
    return tensors, metadata


def write_safetensors(path: str, tensors: Mapping[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write `tensors` (host arrays, any of `DTYPES`) as one safetensors file, keys sorted."""
    header, offset, arrays = {}, 0, []
    for key in sorted(tensors):
        a = np.asarray(tensors[key])
        a = a if a.flags.c_contiguous else a.copy(order="C")  # (np.ascontiguousarray turns 0-d into [1])
        if a.dtype not in _DTYPE_NAMES:
            raise WeightsError(f"cannot write tensor {key!r} of dtype {a.dtype} to {path}; use one of "
                               f"{sorted(str(d) for d in _DTYPE_NAMES)}.")
        header[key] = {"dtype": _DTYPE_NAMES[a.dtype], "shape": list(a.shape),
                       "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    header["__metadata__"] = {"format": "pt", **(metadata or {})}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in arrays:
            f.write(a.tobytes())
    os.replace(tmp, path)


class TensorSource:
    """The tensors of one model folder, possibly sharded over several files; remembers which
    file holds each key (for error messages) and which keys were read."""

    def __init__(self, files: Iterable[str]):
        self.files = list(files)
        self.tensors: dict[str, np.ndarray] = {}
        self.file_of: dict[str, str] = {}
        for path in self.files:
            tensors, _ = read_safetensors(path)
            for key, value in tensors.items():
                self.tensors[key] = value
                self.file_of[key] = path
        self.used: set[str] = set()

    @property
    def where(self) -> str:
        return self.files[0] if len(self.files) == 1 else f"{os.path.dirname(self.files[0])} ({len(self.files)} files)"

    def get(self, key: str) -> np.ndarray:
        self.used.add(key)
        return self.tensors[key]

    def unused(self) -> list[str]:
        return sorted(set(self.tensors) - self.used)


def open_weights(folder: str, stems: Iterable[str] = ("diffusion_pytorch_model", "model"),
                 variant: str | None = None) -> TensorSource:
    """The safetensors weights in `folder`: `<stem>[.<variant>].safetensors`, or the files listed
    by `<stem>.safetensors.index[.<variant>].json` (sharded checkpoints; diffusers and
    transformers put the variant before the last extension)."""
    if not os.path.isdir(folder):
        raise WeightsError(f"weights folder {folder} does not exist; point at a diffusers-format model folder "
                           "(model_index.json, unet/, vae/, text_encoder/, ...) or one of its subfolders.")
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    for stem in stems:
        single = os.path.join(folder, stem + suffix)
        indexes = [os.path.join(folder, f"{stem}.safetensors.index{'.' + variant if variant else ''}.json"),
                   single + ".index.json"]
        if os.path.isfile(single):
            return TensorSource([single])
        index = next((p for p in indexes if os.path.isfile(p)), None)
        if index is not None:
            with open(index) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict):
                raise WeightsError(f"{index} has no 'weight_map' object mapping tensor names to files.")
            files = [os.path.join(folder, name) for name in sorted(set(weight_map.values()))]
            missing = [p for p in files if not os.path.isfile(p)]
            if missing:
                raise WeightsError(f"{index} lists {missing[0]}, which does not exist ({len(missing)} missing).")
            return TensorSource(files)
    pickles = sorted(p for p in os.listdir(folder) if p.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise WeightsError(
            f"{folder} holds only pickle checkpoints ({', '.join(pickles)}); jaxdistill loads safetensors only "
            "(pickle files can run arbitrary code). Convert them once with PyTorch, e.g. "
            "`Model.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`."
        )
    index_name = f".safetensors.index.{variant}.json" if variant else ".safetensors.index.json"
    wanted = " or ".join(f"{s}{suffix} / {s}{index_name}" for s in stems)
    raise WeightsError(f"{folder} has no weights file: expected {wanted}; found {sorted(os.listdir(folder))}.")


def read_config(folder: str, name: str = "config.json") -> dict:
    path = os.path.join(folder, name)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise WeightsError(f"{path} is missing; a diffusers/transformers model folder has a {name} "
                           "beside its weights.") from e
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path} is not valid JSON ({e}).") from e


# ----------------------------------------------------------------------------- layouts


def _to_torch(owner: Any, name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """(PyTorch leaf name, function taking our array to PyTorch's layout)."""
    if isinstance(owner, nnx.Linear) and name == "kernel":
        return "weight", lambda a: a.T
    if isinstance(owner, nnx.Conv) and name == "kernel":
        return "weight", lambda a: a.transpose(3, 2, 0, 1)
    if isinstance(owner, (nnx.LayerNorm, nnx.GroupNorm)) and name == "scale":
        return "weight", lambda a: a
    if isinstance(owner, nnx.Embed) and name == "embedding":
        return "weight", lambda a: a
    return name, lambda a: a


def _from_torch(owner: Any, name: str) -> Callable[[np.ndarray], np.ndarray]:
    if isinstance(owner, nnx.Linear) and name == "kernel":
        return lambda a: a.T
    if isinstance(owner, nnx.Conv) and name == "kernel":
        return lambda a: a.transpose(2, 3, 1, 0)
    return lambda a: a


def parameter_keys(module: nnx.Module) -> dict[tuple, tuple[str, Any]]:
    """{parameter path: (PyTorch key, owning layer)} for every `nnx.Param` of `module`."""
    nodes = dict(nnx.iter_graph(module))
    out = {}
    for path, node in nodes.items():
        if isinstance(node, nnx.Param):
            owner = nodes[path[:-1]]
            leaf, _ = _to_torch(owner, path[-1])
            out[path] = (".".join(str(p) for p in path[:-1] + (leaf,)), owner)
    return out


def _split_params(module: nnx.Module):
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise WeightsError(f"{type(module).__name__} holds non-parameter state {list(nnx.to_flat_state(rest))[:3]}; "
                           "only nnx.Param leaves are loaded from PyTorch weights.")
    return graphdef, params


def load_params(abstract: nnx.Module, source: TensorSource, *, dtype=None, shardings: Any = None,
                prefix: str = "", ignore: Iterable[str] = ()) -> nnx.Module:
    """Fill the abstract module (from `nnx.eval_shape`) with the tensors of `source`.

    prefix: prepended to every key (`text_model.` for CLIP). ignore: regular expressions of
    source keys that are not parameters (buffers such as `position_ids`). shardings: a pure
    dict like `nnx.to_pure_dict(nnx.state(module, nnx.Param))` of `Sharding`s, or None for the
    default device. dtype: the parameters' dtype (default: the abstract module's).
    """
    graphdef, params = _split_params(abstract)
    pure = nnx.to_pure_dict(params)
    keys = parameter_keys(abstract)
    flat_sharding = dict(_flatten(shardings)) if shardings is not None else {}
    values = {}
    for path, (key, owner) in keys.items():
        full = prefix + key
        if full not in source.tensors:
            close = difflib.get_close_matches(full, list(source.tensors), n=3)
            raise WeightsError(f"{source.where} has no tensor {full!r} (parameter {'/'.join(map(str, path))} of "
                               f"{type(abstract).__name__}); closest keys: {close}. Is this folder the right model "
                               "and its config.json the one these weights were saved with?")
        target = _leaf(pure, path)
        array = _from_torch(owner, path[-1])(np.asarray(source.get(full)))
        if tuple(array.shape) != tuple(target.shape):
            expected = _to_torch(owner, path[-1])[1](np.broadcast_to(np.uint8(0), target.shape)).shape
            raise WeightsError(f"{source.file_of[full]}: tensor {full!r} has shape {tuple(source.tensors[full].shape)}"
                               f", but the model built from config.json expects {tuple(expected)}; the weights and "
                               "config.json disagree.")
        array = array.astype(dtype or target.dtype)
        values[path] = jax.device_put(array, flat_sharding.get(path))
    extra = [k for k in source.unused() if k.startswith(prefix) and not any(re.fullmatch(p, k) for p in ignore)]
    if extra:
        raise WeightsError(f"{source.where} has {len(extra)} tensors that {type(abstract).__name__} does not use, "
                           f"e.g. {extra[:5]}; the folder holds a different architecture or config.json is wrong.")
    for path, value in values.items():
        _set_leaf(pure, path, value)
    nnx.replace_by_pure_dict(params, pure)
    return nnx.merge(graphdef, params)


def module_tensors(module: nnx.Module, *, prefix: str = "", dtype=None) -> dict[str, np.ndarray]:
    """{PyTorch key: host array in PyTorch layout} of every parameter of `module`."""
    _, params = _split_params(module)
    pure = nnx.to_pure_dict(params)
    out = {}
    for path, (key, owner) in parameter_keys(module).items():
        _, to_torch = _to_torch(owner, path[-1])
        a = to_torch(np.asarray(jax.device_get(_leaf(pure, path))))
        a = a.astype(dtype) if dtype else a
        out[prefix + key] = a if a.flags.c_contiguous else a.copy(order="C")
    return out


def param_shardings(abstract: nnx.Module, mesh, rules) -> dict:
    """Target shardings (pure dict) of a module's parameters from their logical axis names."""
    from jaxdistill.train.sharding import param_specs

    specs = param_specs(abstract, rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def _flatten(tree, prefix=()):
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flatten(v, prefix + (k,))
    else:
        yield prefix, tree


def _leaf(state, path):
    for p in path:
        state = state[p]
    return state


def _set_leaf(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def count_params(module_or_state: Any) -> int:
    """Number of parameter scalars (works on abstract modules too)."""
    state = nnx.state(module_or_state, nnx.Param) if isinstance(module_or_state, nnx.Module) else module_or_state
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(state)))
