"""CLIP text encoders in Flax NNX with transformers' parameter names, and the CLIP tokenizer.

`CLIPTextModel` (SD1.x, SD2.x, SDXL's first encoder) and `CLIPTextModelWithProjection` (SDXL's
second, OpenCLIP bigG) mirror transformers' module trees, so a parameter's path is its
safetensors key (`weights.py`):

    text_model.embeddings.{token_embedding, position_embedding}
    text_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1, mlp.{fc1, fc2}, layer_norm2}
    text_model.final_layer_norm
    text_projection                                        (WithProjection only, no bias)

transformers ≥ 5.6 flattened `CLIPTextModel` (its `save_pretrained` writes keys without
`text_model.`), while SD checkpoints keep the prefix; `from_pretrained` reads either and
`save_pretrained` writes the prefixed form, which every transformers version loads.

The forward pass matches transformers' exactly: pre-LN blocks with a causal mask and no padding
mask (SD feeds prompts padded to `max_length`), `quick_gelu` (x·σ(1.702x), OpenAI CLIP) or exact
`gelu` (OpenCLIP), and the pooled output taken at the EOS token: when `eos_token_id == 2`
(configs older than transformers PR #24773, e.g. SD1.5's) at the argmax of `input_ids` (the
EOS id is the largest in CLIP's vocabulary), otherwise at the first position equal to
`eos_token_id`. `hidden_states[0]` is the embeddings' output and `hidden_states[i]` the output
of layer i, before the final layer norm; SDXL conditions on `hidden_states[-2]`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from jaxdistill.models.attention import attention
from jaxdistill.models.layers import abstract_module
from jaxdistill.models.weights import (
    WeightsError,
    load_params,
    module_tensors,
    open_weights,
    param_shardings,
    read_config,
    write_safetensors,
)
from jaxdistill.train.sharding import DEFAULT_RULES

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
}
# transformers' CLIPTextConfig defaults, for keys a config.json leaves out.
CONFIG_DEFAULTS = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "projection_dim": 512,
    "num_hidden_layers": 12, "num_attention_heads": 8, "max_position_embeddings": 77,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "eos_token_id": 49407, "initializer_factor": 1.0,
}
WEIGHTS_NAME = "model.safetensors"
BUFFER_KEYS = (r"(text_model\.)?embeddings\.position_ids",)  # PyTorch buffers, not parameters


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """The fields of a transformers `CLIPTextConfig` that define the network."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    projection_dim: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    hidden_act: str
    layer_norm_eps: float
    eos_token_id: int
    initializer_factor: float

    @classmethod
    def from_dict(cls, config: dict) -> CLIPTextConfig:
        model_type = config.get("model_type", "clip_text_model")
        archs = config.get("architectures") or []
        if model_type != "clip_text_model" or any("Vision" in a for a in archs):
            hint = (" (a full CLIPModel config: pass its 'text_config')" if model_type == "clip" else "")
            raise ValueError(f"config model_type={model_type!r}, architectures={archs}: jaxdistill's CLIP supports "
                             f"text encoders only (model_type 'clip_text_model'){hint}.")
        values = {**CONFIG_DEFAULTS, **{k: config[k] for k in CONFIG_DEFAULTS if config.get(k) is not None}}
        if values["hidden_act"] not in ACTIVATIONS:
            raise ValueError(f"config hidden_act={values['hidden_act']!r} is not supported; expected one of "
                             f"{sorted(ACTIVATIONS)}.")
        if not isinstance(values["eos_token_id"], int) or isinstance(values["eos_token_id"], bool):
            raise ValueError(f"config eos_token_id={values['eos_token_id']!r} is not supported; expected one integer.")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers",
                    "num_attention_heads", "max_position_embeddings"):
            if not isinstance(values[key], int) or isinstance(values[key], bool) or values[key] < 1:
                raise ValueError(f"config {key}={values[key]!r} is not supported; expected a positive integer.")
        if values["hidden_size"] % values["num_attention_heads"]:
            raise ValueError(f"config hidden_size={values['hidden_size']} is not divisible by "
                             f"num_attention_heads={values['num_attention_heads']}.")
        values["layer_norm_eps"] = float(values["layer_norm_eps"])
        values["initializer_factor"] = float(values["initializer_factor"])
        return cls(**values)


@struct.dataclass
class CLIPTextOutput:
    """transformers' `BaseModelOutputWithPooling` / `CLIPTextModelOutput`, as a pytree."""

    last_hidden_state: jax.Array
    pooler_output: jax.Array
    hidden_states: tuple[jax.Array, ...] | None = None
    text_embeds: jax.Array | None = None


def _normal(std: float, axes) -> nnx.Initializer:
    return nnx.with_partitioning(nnx.initializers.normal(std), axes)


class _Layers:
    """Layer constructors sharing dtype, param_dtype and rngs."""

    def __init__(self, dtype, param_dtype, rngs):
        self.dtype, self.param_dtype, self.rngs = dtype, param_dtype, rngs

    # Logical axis names only: placement happens at load time (`param_shardings`).
    def linear(self, n_in: int, n_out: int, std: float, axes, bias: bool = True) -> nnx.Linear:
        with nnx.use_eager_sharding(False):
            return nnx.Linear(n_in, n_out, use_bias=bias, kernel_init=_normal(std, axes),
                              bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
                              dtype=self.dtype, param_dtype=self.param_dtype, rngs=self.rngs)

    def layer_norm(self, dim: int, eps: float) -> nnx.LayerNorm:
        with nnx.use_eager_sharding(False):
            return nnx.LayerNorm(dim, epsilon=eps, dtype=self.dtype, param_dtype=self.param_dtype,
                                 scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("embed",)),
                                 bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)),
                                 rngs=self.rngs)

    def embed(self, n: int, dim: int, std: float) -> nnx.Embed:
        with nnx.use_eager_sharding(False):
            return nnx.Embed(n, dim, embedding_init=_normal(std, (None, "embed")), dtype=self.dtype,
                             param_dtype=self.param_dtype, rngs=self.rngs)


class CLIPTextEmbeddings(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, mk: _Layers):
        std = 0.02 * cfg.initializer_factor
        self.token_embedding = mk.embed(cfg.vocab_size, cfg.hidden_size, std)
        self.position_embedding = mk.embed(cfg.max_position_embeddings, cfg.hidden_size, std)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        length = input_ids.shape[-1]
        if length > self.position_embedding.num_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                             f"{self.position_embedding.num_embeddings}.")
        return self.token_embedding(input_ids) + self.position_embedding(jnp.arange(length))[None]


class CLIPAttention(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, mk: _Layers, impl: str):
        d, f = cfg.hidden_size, cfg.initializer_factor
        in_std = d**-0.5 * (2 * cfg.num_hidden_layers) ** -0.5 * f
        self.num_heads, self.impl = cfg.num_attention_heads, impl
        self.k_proj = mk.linear(d, d, in_std, ("embed", "heads"))
        self.v_proj = mk.linear(d, d, in_std, ("embed", "heads"))
        self.q_proj = mk.linear(d, d, in_std, ("embed", "heads"))
        self.out_proj = mk.linear(d, d, d**-0.5 * f, ("heads", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        split = lambda t: t.reshape(*t.shape[:-1], self.num_heads, -1)  # noqa: E731
        out = attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                        impl=self.impl, causal=True)
        return self.out_proj(out.reshape(*x.shape[:-1], -1))


class CLIPMLP(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, mk: _Layers):
        d, f = cfg.hidden_size, cfg.initializer_factor
        self.hidden_act = cfg.hidden_act
        self.fc1 = mk.linear(d, cfg.intermediate_size, (2 * d) ** -0.5 * f, ("embed", "mlp"))
        self.fc2 = mk.linear(cfg.intermediate_size, d, d**-0.5 * (2 * cfg.num_hidden_layers) ** -0.5 * f,
                             ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(ACTIVATIONS[self.hidden_act](self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, mk: _Layers, impl: str):
        self.self_attn = CLIPAttention(cfg, mk, impl)
        self.layer_norm1 = mk.layer_norm(cfg.hidden_size, cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg, mk)
        self.layer_norm2 = mk.layer_norm(cfg.hidden_size, cfg.layer_norm_eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    def __init__(self, cfg: CLIPTextConfig, mk: _Layers, impl: str):
        self.layers = nnx.List([CLIPEncoderLayer(cfg, mk, impl) for _ in range(cfg.num_hidden_layers)])

    def __call__(self, x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        states = [x]
        for layer in self.layers:
            x = layer(x)
            states.append(x)
        return x, tuple(states)


class CLIPTextTransformer(nnx.Module):
    """The body both models share (`text_model`)."""

    def __init__(self, cfg: CLIPTextConfig, mk: _Layers, impl: str):
        self.eos_token_id = cfg.eos_token_id
        self.embeddings = CLIPTextEmbeddings(cfg, mk)
        self.encoder = CLIPEncoder(cfg, mk, impl)
        self.final_layer_norm = mk.layer_norm(cfg.hidden_size, cfg.layer_norm_eps)

    def __call__(self, input_ids: jax.Array, output_hidden_states: bool = False) -> CLIPTextOutput:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length] token ids; got shape {input_ids.shape}.")
        ids = jnp.asarray(input_ids).astype(jnp.int32)
        x, states = self.encoder(self.embeddings(ids))
        last = self.final_layer_norm(x)
        if self.eos_token_id == 2:
            # Configs from before transformers PR #24773: the EOS token has the largest id.
            position = jnp.argmax(ids, axis=-1)
        else:
            position = jnp.argmax((ids == self.eos_token_id).astype(jnp.int32), axis=-1)
        pooled = last[jnp.arange(last.shape[0]), position]
        return CLIPTextOutput(last_hidden_state=last, pooler_output=pooled,
                              hidden_states=states if output_hidden_states else None)


class _CLIPTextBase(nnx.Module):
    """Construction from config dicts, and transformers-format folders in and out."""

    def __init__(self, config: dict, *, dtype=None, param_dtype=jnp.float32, attention_impl: str = "xla",
                 rngs: nnx.Rngs):
        cfg = CLIPTextConfig.from_dict(config)
        self.config = cfg
        # The full config.json (hashable text), written back by save_pretrained.
        self._config_json = json.dumps(config, sort_keys=True)
        self.text_model = CLIPTextTransformer(cfg, _Layers(dtype, param_dtype, rngs), attention_impl)

    # ------------------------------------------------------------------ transformers folders

    @classmethod
    def from_pretrained(cls, folder: str, *, dtype=None, param_dtype=jnp.float32, mesh=None,
                        rules: Sequence = DEFAULT_RULES, subfolder: str | None = None, variant: str | None = None,
                        attention_impl: str = "xla"):
        """Load a transformers text-encoder folder (`config.json` + `model[.variant].safetensors`,
        possibly sharded). `folder` is the encoder's folder, or a diffusers model root with
        `subfolder` ("text_encoder", "text_encoder_2"; a root without config.json defaults to
        "text_encoder"). Parameters are placed on `mesh` by their logical axes and `rules`."""
        path = _resolve_folder(folder, subfolder)
        config = read_config(path)
        model_cls = _class_for(config) if cls is _CLIPTextBase else cls
        try:
            abstract = abstract_module(lambda rngs: model_cls(config, dtype=dtype, param_dtype=param_dtype,
                                                              attention_impl=attention_impl, rngs=rngs))
        except ValueError as e:
            raise ValueError(f"{os.path.join(path, 'config.json')}: {e}") from e
        shardings = param_shardings(abstract, mesh, rules) if mesh is not None else None
        source = open_weights(path, stems=("model",), variant=variant)
        text_keys = [k for k in source.tensors if k != "text_projection.weight" and not _is_buffer(k)]
        prefix = "text_model." if text_keys and all(k.startswith("text_model.") for k in text_keys) else ""
        ignore = BUFFER_KEYS + (r"text_projection\.weight",)
        sub = lambda name: shardings[name] if shardings is not None else None  # noqa: E731
        abstract.text_model = load_params(abstract.text_model, source, shardings=sub("text_model"),
                                          prefix=prefix, ignore=ignore)
        if isinstance(abstract, CLIPTextModelWithProjection):
            abstract.text_projection = load_params(abstract.text_projection, source, prefix="text_projection.",
                                                   shardings=sub("text_projection"))
        extra = [k for k in source.unused() if not _is_buffer(k)]
        if extra:
            raise WeightsError(f"{source.where} has {len(extra)} tensors that {model_cls.__name__} does not use, e.g. "
                               f"{extra[:5]}; the folder holds a different architecture or config.json is wrong.")
        return abstract

    def save_pretrained(self, folder: str, *, dtype=None) -> None:
        """Write `config.json` and `model.safetensors` (keys `text_model.*`) that transformers'
        `from_pretrained` loads; `dtype` casts the written tensors (default: as stored)."""
        os.makedirs(folder, exist_ok=True)
        tensors = module_tensors(self, dtype=dtype)
        config = {**json.loads(self._config_json), **dataclasses.asdict(self.config),
                  "architectures": [type(self).__name__], "model_type": "clip_text_model"}
        config["dtype"] = str(next(iter(tensors.values())).dtype)
        write_safetensors(os.path.join(folder, WEIGHTS_NAME), tensors)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")


class CLIPTextModel(_CLIPTextBase):
    """transformers' `CLIPTextModel`: `__call__(input_ids) -> CLIPTextOutput` with
    `last_hidden_state`, `pooler_output` and, when asked, `hidden_states`."""

    def __call__(self, input_ids: jax.Array, output_hidden_states: bool = False) -> CLIPTextOutput:
        return self.text_model(input_ids, output_hidden_states)


class CLIPTextModelWithProjection(_CLIPTextBase):
    """transformers' `CLIPTextModelWithProjection`: adds `text_embeds` = text_projection(pooled)."""

    def __init__(self, config: dict, *, dtype=None, param_dtype=jnp.float32, attention_impl: str = "xla",
                 rngs: nnx.Rngs):
        super().__init__(config, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl, rngs=rngs)
        cfg = self.config
        self.text_projection = _Layers(dtype, param_dtype, rngs).linear(
            cfg.hidden_size, cfg.projection_dim, cfg.hidden_size**-0.5 * cfg.initializer_factor, ("embed", None),
            bias=False)

    def __call__(self, input_ids: jax.Array, output_hidden_states: bool = False) -> CLIPTextOutput:
        out = self.text_model(input_ids, output_hidden_states)
        return out.replace(text_embeds=self.text_projection(out.pooler_output))


def from_pretrained(folder: str, **kwargs) -> CLIPTextModel | CLIPTextModelWithProjection:
    """`CLIPTextModel` or `CLIPTextModelWithProjection`, as config.json's `architectures` says;
    keyword arguments as `CLIPTextModel.from_pretrained`."""
    return _CLIPTextBase.from_pretrained(folder, **kwargs)


def _class_for(config: dict) -> type:
    archs = config.get("architectures") or ["CLIPTextModel"]
    if "CLIPTextModelWithProjection" in archs:
        return CLIPTextModelWithProjection
    if "CLIPTextModel" in archs:
        return CLIPTextModel
    raise ValueError(f"config architectures={archs} is not supported; expected CLIPTextModel or "
                     "CLIPTextModelWithProjection.")


def _is_buffer(key: str) -> bool:
    return any(re.fullmatch(p, key) for p in BUFFER_KEYS)


def _resolve_folder(folder: str, subfolder: str | None) -> str:
    if subfolder is None and not os.path.isfile(os.path.join(folder, "config.json")) \
            and os.path.isfile(os.path.join(folder, "model_index.json")):
        subfolder = "text_encoder"
    return os.path.join(folder, subfolder) if subfolder else folder


# ----------------------------------------------------------------------------- tokenizer


def load_tokenizer(folder: str, subfolder: str | None = "tokenizer"):
    """transformers' `CLIPTokenizer` from `folder/subfolder` (vocab.json + merges.txt, or
    tokenizer.json; tokenizer_config.json and special_tokens_map.json when present). A folder
    that is itself the tokenizer folder (no `subfolder` inside it) is used as is."""
    from transformers import CLIPTokenizer

    path = folder
    if subfolder and os.path.isdir(os.path.join(folder, subfolder)):
        path = os.path.join(folder, subfolder)
    has_bpe = all(os.path.isfile(os.path.join(path, n)) for n in ("vocab.json", "merges.txt"))
    if not (has_bpe or os.path.isfile(os.path.join(path, "tokenizer.json"))):
        found = sorted(os.listdir(path)) if os.path.isdir(path) else "the folder does not exist"
        raise FileNotFoundError(
            f"no CLIP tokenizer in {path}: expected vocab.json and merges.txt (or tokenizer.json); found {found}. "
            f"Point at a diffusers model folder with a '{subfolder}' subfolder, or at the tokenizer folder itself.")
    return CLIPTokenizer.from_pretrained(path)


def tokenize(tokenizer, prompts: str | Sequence[str], max_length: int | None = None) -> np.ndarray:
    """int32 token ids [B, max_length] as SD pipelines make them: BOS, tokens, EOS, padded to
    `max_length` with the tokenizer's pad token and truncated to fit (the EOS kept).
    `max_length` defaults to `tokenizer.model_max_length` (77 for SD)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    max_length = int(max_length or tokenizer.model_max_length)
    if max_length > 100_000:
        raise ValueError(f"tokenizer has no usable model_max_length ({tokenizer.model_max_length}); pass max_length.")
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="np")["input_ids"]
    return np.asarray(ids, dtype=np.int32)
