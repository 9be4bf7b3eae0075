"""A Stable Diffusion teacher from a diffusers-format folder, as the engine sees it (design §7).

    folder/model_index.json, scheduler/, unet/, vae/, text_encoder/, tokenizer/
           [text_encoder_2/, tokenizer_2/  (SDXL)]

`StableDiffusion.from_pretrained(folder)` loads every part through jaxdistill's own NNX modules
(safetensors only). Prompts are tokenised and encoded once, outside the differentiated graph,
into a *prompt bank*: a pytree of per-prompt conditioning arrays that travels with the teacher's
parameters, so drawing conditions inside the compiled step is a gather, not a text-encoder call.

Conditioning (a dict pytree, batch first):

    SD1.x / SD2.x   {"context": last hidden state of the text encoder [B, L, D]}
    SDXL            {"context": penultimate states of both encoders, concatenated [B, L, 768+1280],
                     "text_embeds": projected pooled output of encoder 2 [B, 1280],
                     "time_ids": (H, W, crop_top, crop_left, H, W) [B, 6]}

The null condition is the empty prompt's encoding, or zeros where the folder's
`force_zeros_for_empty_prompt` says so (SDXL; DMD2 uses zeros too). Distillation runs in the
VAE's latent space; the VAE only decodes samples for pictures and metrics. A folder whose
model_index.json has `"vae": [null, null]` is a pixel-space model (the embedded world's
teacher): its "latents" are the images.

`UNetDenoiser` wraps a UNet as the σ-space denoiser D(x, σ, cond) → x̂_0 the engine trains:
the UNet's input is x/√(1+σ²) at the timestep t(σ) of the folder's scheduler table, and its ε,
v or x_0 output is mapped to x̂_0 (`jaxdistill.diffusion.make_denoiser`). Generator and critic
are such wrappers around copies of the teacher's UNet (SiD, DMD2 initialise both from it).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdistill.diffusion import VPSchedule, make_denoiser
from jaxdistill.models import clip
from jaxdistill.models.unet import UNet2DConditionModel
from jaxdistill.models.vae import AutoencoderKL
from jaxdistill.models.weights import WeightsError, read_config

ENCODE_BATCH = 64  # prompts per text-encoder call when building a prompt bank


class UNetDenoiser(nnx.Module):
    """σ-space denoiser of a diffusers UNet: `(x, σ [B], cond) -> x̂_0`; `forward` also returns the
    mid-block features averaged over space (the critic's bottleneck for a discriminator head)."""

    def __init__(self, unet: UNet2DConditionModel, schedule: VPSchedule):
        self.unet = unet
        self.schedule = schedule

    def forward(self, x: jax.Array, sigma: jax.Array, cond: dict) -> tuple[jax.Array, jax.Array]:
        feats = []

        def net(x_in, t):
            out, mid = self.unet(x_in, t, cond["context"], _added(cond), return_mid_block=True)
            feats.append(jnp.mean(mid.astype(jnp.float32), axis=(1, 2)))
            return out.astype(x_in.dtype)

        x0 = make_denoiser(net, self.schedule.prediction_type, self.schedule)(x, sigma)
        return x0, feats[0]

    def __call__(self, x: jax.Array, sigma: jax.Array, cond: dict) -> jax.Array:
        net = lambda x_in, t: self.unet(x_in, t, cond["context"], _added(cond)).astype(x_in.dtype)  # noqa: E731
        return make_denoiser(net, self.schedule.prediction_type, self.schedule)(x, sigma)


def _added(cond: dict) -> dict | None:
    return {"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]} if "text_embeds" in cond else None


class StableDiffusion:
    """The parts of a diffusers SD / SDXL folder, as NNX modules, plus its VP schedule."""

    def __init__(self, folder: str, unet, vae, text_encoders: list, tokenizers: list, schedule: VPSchedule,
                 zeros_for_empty_prompt: bool, vae_factor: int | None = None):
        self.folder, self.unet, self.vae = folder, unet, vae
        self.text_encoders, self.tokenizers, self.schedule = text_encoders, tokenizers, schedule
        self.zeros_for_empty_prompt = zeros_for_empty_prompt
        self.vae_factor = vae_factor if vae_factor is not None else 1 if vae is None else vae.downsample_factor
        self.is_sdxl = unet.config.get("addition_embed_type") == "text_time"
        self.text_tokens = text_encoders[0].config.max_position_embeddings if text_encoders else 77
        self._encode = jax.jit(self._encode_ids)

    @classmethod
    def abstract(cls, folder: str = "", *, architecture: str = "", dtype=None, param_dtype=jnp.float32,
                 attention_impl: str = "xla", remat: str = "none",
                 scan_layers: bool = False) -> "StableDiffusion":
        """The teacher's shapes without its weights: an abstract UNet (`nnx.eval_shape`, nothing
        allocated or read) and the schedule, from a diffusers `folder`'s config files or a
        published `architecture` (a name in `jaxdistill.models.architectures`), exactly one of
        them (a folder that happens to be called "sd15" is never taken for the architecture).
        Enough to build and compile the train step (`jaxdistill info`); no text encoders or VAE."""
        if bool(folder) == bool(architecture):
            raise ValueError(f"give a teacher folder or an architecture name, not {'both' if folder else 'neither'} "
                             f"(folder={folder!r}, architecture={architecture!r}).")
        if folder:
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"{folder!r} is not a folder; a diffusers folder holds model_index.json, "
                                        "unet/ and scheduler/.")
            source = folder
            unet_config = read_config(os.path.join(folder, "unet"))
            schedule = VPSchedule.from_config(read_config(os.path.join(folder, "scheduler"), "scheduler_config.json"))
            model_index = read_config(folder, "model_index.json")
            pixel_space = model_index.get("vae", [None, None])[0] is None
            factor = 1 if pixel_space else 2 ** (len(read_config(os.path.join(folder, "vae"))["block_out_channels"]) - 1)
            zeros = bool(model_index.get("force_zeros_for_empty_prompt", False))
            tokens = read_config(os.path.join(folder, "text_encoder"))["max_position_embeddings"]
        else:
            from jaxdistill.diffusion.schedules import stable_diffusion_schedule
            from jaxdistill.models.architectures import architecture as published

            source = architecture
            unet_config, factor, (tokens, _), _, prediction = published(architecture)
            schedule, zeros = stable_diffusion_schedule(prediction), architecture == "sdxl"
        unet = UNet2DConditionModel.abstract(unet_config, dtype=dtype, param_dtype=param_dtype,
                                             attention_impl=attention_impl, remat=remat, scan_layers=scan_layers)
        sd = cls(source, unet, None, [], [], schedule, zeros, vae_factor=factor)
        sd.text_tokens = tokens
        return sd

    @classmethod
    def random(cls, source: str | dict, *, seed: int = 0, dtype=None, param_dtype=jnp.float32, attention_impl: str = "xla",
               remat: str = "none", scan_layers: bool = False) -> "StableDiffusion":
        """A randomly initialised UNet of a published architecture (`source` a name in
        `jaxdistill.models.architectures`, or a UNet config dict taken as SD1.5-like: ε schedule,
        8× VAE, 77 tokens) with its schedule, no text encoders or VAE: for speed
        and memory benchmarks (`experiments/bench_step.py`), which need real arrays of the real
        shapes but no trained weights. Training never calls this; it loads a folder."""
        from jaxdistill.diffusion.schedules import stable_diffusion_schedule
        from jaxdistill.models.architectures import architecture

        if isinstance(source, dict):
            unet_config, factor, tokens, prediction, name = source, 8, 77, "epsilon", "custom"
        else:
            unet_config, factor, (tokens, _), _, prediction = architecture(source)
            name = source
        unet = UNet2DConditionModel(unet_config, dtype=dtype, param_dtype=param_dtype, attention_impl=attention_impl,
                                    remat=remat, scan_layers=scan_layers, rngs=nnx.Rngs(seed))
        sd = cls(name, unet, None, [], [], stable_diffusion_schedule(prediction), name == "sdxl",
                 vae_factor=factor)
        sd.text_tokens = tokens
        return sd

    def condition_shapes(self, num_prompts: int, dtype=jnp.float32) -> dict:
        """ShapeDtypeStructs of `num_prompts` prompts' conditioning (see the module docstring)."""
        cfg = self.unet.config
        shapes = {"context": (self.text_tokens, cfg["cross_attention_dim"])}
        if self.is_sdxl:
            shapes["text_embeds"] = (cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"],)
            shapes["time_ids"] = (6,)
        return {k: jax.ShapeDtypeStruct((num_prompts,) + v, jnp.float32 if k == "time_ids" else dtype)
                for k, v in shapes.items()}

    @classmethod
    def from_pretrained(cls, folder: str, *, dtype=None, param_dtype=jnp.float32, attention_impl: str = "xla",
                        remat: str = "none", scan_layers: bool = False, variant: str | None = None,
                        ) -> "StableDiffusion":
        index = os.path.join(folder, "model_index.json")
        if not os.path.isfile(index):
            raise WeightsError(f"{folder} is not a diffusers model folder: {index} is missing. Point at the folder "
                               "holding model_index.json, unet/, vae/, text_encoder/, tokenizer/ and scheduler/.")
        with open(index) as f:
            model_index = json.load(f)
        for part in ("unet", "text_encoder", "tokenizer", "scheduler"):
            if part not in model_index or not os.path.isdir(os.path.join(folder, part)):
                raise WeightsError(f"{folder}: model_index.json or the folder lacks '{part}'; a Stable Diffusion "
                                   "folder has unet/, vae/, text_encoder/, tokenizer/ and scheduler/.")
        pixel_space = model_index.get("vae", [None, None])[0] is None
        if not pixel_space and not os.path.isdir(os.path.join(folder, "vae")):
            raise WeightsError(f"{folder}: model_index.json names a vae but the folder has no vae/; restore it, or "
                               'set "vae": [null, null] for a pixel-space model.')
        schedule = VPSchedule.from_config(read_config(os.path.join(folder, "scheduler"), "scheduler_config.json"))
        unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), dtype=dtype, param_dtype=param_dtype,
                                                    attention_impl=attention_impl, remat=remat,
                                                    scan_layers=scan_layers, variant=variant)
        vae = None if pixel_space else AutoencoderKL.from_pretrained(os.path.join(folder, "vae"), dtype=dtype,
                                                                     param_dtype=param_dtype, variant=variant)
        parts = [("text_encoder", "tokenizer")]
        if "text_encoder_2" in model_index and os.path.isdir(os.path.join(folder, "text_encoder_2")):
            parts.append(("text_encoder_2", "tokenizer_2"))
        encoders = [clip.from_pretrained(os.path.join(folder, enc), dtype=dtype, param_dtype=param_dtype,
                                         attention_impl=attention_impl, variant=variant) for enc, _ in parts]
        tokenizers = [clip.load_tokenizer(folder, tok) for _, tok in parts]
        zeros = bool(model_index.get("force_zeros_for_empty_prompt", False))
        return cls(folder, unet, vae, encoders, tokenizers, schedule, zeros)

    # ------------------------------------------------------------------------------ prompts

    def _encode_ids(self, ids: list, size: jax.Array) -> dict:
        if not self.is_sdxl:
            return {"context": self.text_encoders[0](ids[0]).last_hidden_state}
        outs = [enc(i, output_hidden_states=True) for enc, i in zip(self.text_encoders, ids)]
        context = jnp.concatenate([o.hidden_states[-2] for o in outs], axis=-1)
        b = context.shape[0]
        time_ids = jnp.broadcast_to(jnp.stack([size[0], size[1], 0, 0, size[0], size[1]]).astype(jnp.float32), (b, 6))
        return {"context": context, "text_embeds": outs[1].text_embeds, "time_ids": time_ids}

    def encode_prompts(self, prompts: Sequence[str], resolution: int) -> dict:
        """The conditioning of each prompt (see the module docstring), as device arrays."""
        out = []
        size = jnp.asarray([resolution, resolution], jnp.float32)
        for start in range(0, len(prompts), ENCODE_BATCH):
            chunk = list(prompts[start:start + ENCODE_BATCH])
            ids = [jnp.asarray(clip.tokenize(tok, chunk)) for tok in self.tokenizers]
            enc = self._encode(ids, size)
            if self.zeros_for_empty_prompt:  # the embeddings, not the size ids
                empty = jnp.asarray([p == "" for p in chunk])
                for k in ("context", "text_embeds"):
                    if k in enc:
                        enc[k] = jnp.where(empty.reshape((-1,) + (1,) * (enc[k].ndim - 1)), 0.0, enc[k])
            out.append(enc)
        return jax.tree.map(lambda *a: jnp.concatenate(a, axis=0), *out)

    def images_from_latents(self, latents: jax.Array) -> jax.Array:
        """Images in [-1, 1]: the VAE's decoding, or the samples themselves, clipped, in pixel space."""
        images = latents if self.vae is None else self.vae.images_from_latents(latents)
        return jnp.clip(images, -1.0, 1.0)

    def latent_shape(self, resolution: int) -> tuple:
        f = self.vae_factor
        if resolution % (f * 2 ** self.unet.num_upsamplers):
            raise ValueError(f"resolution {resolution} must be a multiple of {f * 2 ** self.unet.num_upsamplers} "
                             f"(VAE factor {f} × UNet factor {2 ** self.unet.num_upsamplers}).")
        return (resolution // f, resolution // f, self.unet.config["in_channels"])


def prompt_bank(sd: StableDiffusion, prompts: Sequence[str], resolution: int) -> dict:
    """{"cond": per-prompt conditioning [P, ...], "null": the empty prompt's [1, ...]}."""
    if not prompts:
        raise ValueError("the prompt list is empty; give at least one prompt (one per line in teacher.prompts).")
    return {"cond": sd.encode_prompts(list(prompts), resolution), "null": sd.encode_prompts([""], resolution)}


def abstract_prompt_bank(sd: StableDiffusion, num_prompts: int, dtype=jnp.float32, rows_multiple: int = 1) -> dict:
    """The shapes of `prompt_bank(sd, <num_prompts prompts>, ...)` (rows padded like
    `sharded_prompt_bank`'s), for compiling without encoding."""
    rows = -(-num_prompts // rows_multiple) * rows_multiple
    return {"cond": sd.condition_shapes(rows, dtype), "null": sd.condition_shapes(1, dtype)}


def random_prompt_bank(sd: StableDiffusion, num_prompts: int, resolution: int, dtype=jnp.float32,
                       seed: int = 0) -> dict:
    """A prompt bank of the shapes `prompt_bank` gives, filled with standard-normal text
    features (SDXL's time_ids are the real ones for `resolution`, the null prompt is zeros):
    for benchmarks with `StableDiffusion.random`, which has no text encoder."""
    shapes = sd.condition_shapes(num_prompts + 1, dtype)
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    bank = {k: jax.random.normal(key, s.shape, s.dtype) for key, (k, s) in zip(keys, sorted(shapes.items()))}
    if "time_ids" in bank:
        bank["time_ids"] = jnp.tile(jnp.asarray([resolution, resolution, 0, 0, resolution, resolution], jnp.float32),
                                    (num_prompts + 1, 1))
    return {"cond": {k: v[:num_prompts] for k, v in bank.items()},
            "null": {k: jnp.zeros_like(v[num_prompts:]) if k != "time_ids" else v[num_prompts:]
                     for k, v in bank.items()}}


def sharded_prompt_bank(sd: StableDiffusion, prompts: Sequence[str], resolution: int, mesh, row_axes) -> dict:
    """`prompt_bank` with the rows of "cond" split over the mesh axes `row_axes` and "null"
    replicated. Each process encodes only the rows its own devices hold
    (`jax.make_array_from_callback`), so a large prompt set is neither encoded nor stored whole
    on every host. Rows are padded to a multiple of the axes' size by repeating the last prompt;
    `sd_problem` draws only from the first len(prompts) rows, so padding is never sampled."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    axes = (row_axes,) if isinstance(row_axes, str) else tuple(row_axes)
    shards = int(np.prod([mesh.shape[a] for a in axes]))
    padded = list(prompts) + [prompts[-1]] * (-len(prompts) % shards)
    null = sd.encode_prompts([""], resolution)
    encoded = {}

    def rows(index, key):
        span = index[0].indices(len(padded))[:2]
        if span not in encoded:
            encoded[span] = jax.device_get(sd.encode_prompts(padded[span[0]:span[1]], resolution))
        return encoded[span][key]

    sharding = NamedSharding(mesh, P(axes))
    cond = {k: jax.make_array_from_callback((len(padded),) + v.shape[1:], sharding,
                                            lambda index, k=k: rows(index, k)).astype(v.dtype)
            for k, v in null.items()}
    replicated = NamedSharding(mesh, P())
    return {"cond": cond, "null": jax.tree.map(lambda a: jax.device_put(a, replicated), null)}


def read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"teacher.prompts={path!r} is not a file; give a text file with one prompt per line "
                                "(--config.teacher.prompts=prompts.txt).")
    with open(path, encoding="utf-8") as f:
        prompts = [line.strip() for line in f if line.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts; write one prompt per line.")
    return prompts


def sd_problem(sd: StableDiffusion, unet_graphdef: Any, resolution: int, num_prompts: int | None = None):
    """The distillation `Problem` of an SD teacher whose parameters are
    {"unet": UNet params (pure dict), "prompts": prompt_bank(...)}; conditions are drawn from the
    bank's first `num_prompts` rows (default: all; padded rows beyond it are never drawn)."""
    from jaxdistill.train.step import Problem

    def teacher_apply(teacher, x, sigma, cond):
        unet = nnx.merge(unet_graphdef, teacher["unet"])
        return UNetDenoiser(unet, sd.schedule)(x, sigma, cond)

    def sample_conditions(teacher, key, n):
        bank = teacher["prompts"]
        count = num_prompts or jax.tree.leaves(bank["cond"])[0].shape[0]
        idx = jax.random.randint(key, (n,), 0, count)
        cond = jax.tree.map(lambda a: a[idx], bank["cond"])
        uncond = jax.tree.map(lambda a: jnp.broadcast_to(a[0], (n,) + a.shape[1:]), bank["null"])
        return cond, uncond

    return Problem(event_shape=sd.latent_shape(resolution), teacher_apply=teacher_apply,
                   sample_conditions=sample_conditions)


def conditions_for(bank: dict, n: int, num_prompts: int | None = None) -> dict:
    """Conditioning of n fixed samples: the bank's first `num_prompts` (default: all) prompts cycled."""
    count = num_prompts or jax.tree.leaves(bank["cond"])[0].shape[0]
    idx = np.arange(n) % count
    return jax.tree.map(lambda a: a[idx], bank["cond"])
