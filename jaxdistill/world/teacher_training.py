"""Training the world's teacher: a pixel-space text-to-image diffusion model built from exactly
the parts a Stable Diffusion user has (design §8).

    jaxdistill teacher-train --config configs/world_teacher.py --out jaxdistill/world/assets/teacher

A `UNet2DConditionModel` on 32×32×3 pixels and a `CLIPTextModel` trained jointly from scratch
on the world's captions, with SD's scaled-linear VP schedule and ε-prediction (Ho et al. 2020;
Rombach et al. 2022): `L = E w(t)‖ε̂(√ᾱ_t x_0 + √(1−ᾱ_t) ε, t, c) − ε‖²`, t uniform over the
1000 training steps, with the Min-SNR-γ weight w(t) = min(SNR_t, γ)/SNR_t, SNR_t = ᾱ_t/(1−ᾱ_t)
(Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"; γ = 5 as
there, 0 for the plain ε loss): it lowers the weight of the nearly clean timesteps, whose fine
detail would otherwise dominate the gradient of a small model. 10% of captions replaced by the empty prompt so the model also learns the
unconditional score classifier-free guidance needs (Ho & Salimans 2022). Images come fresh from
the procedural world at every step (no dataset, no epoch). The written weights are the EMA.

The output is a diffusers-format folder (model_index.json, unet/, text_encoder/, tokenizer/,
scheduler/, all safetensors) with no vae/: the model works in pixel space, and
`StableDiffusion.from_pretrained` loads it through the same path as SD1.5. `train_log.jsonl`
beside it records the losses.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdistill.diffusion import VPSchedule
from jaxdistill.models import clip
from jaxdistill.models.clip import CLIPTextModel
from jaxdistill.models.unet import UNet2DConditionModel
from jaxdistill.train.sharding import make_mesh
from jaxdistill.world import scene, vocab

SCHEDULER = {"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
             "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": "epsilon",
             "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False, "timestep_spacing": "leading"}
WORDS = ("a",) + scene.COLOUR_NAMES + scene.KINDS


def min_snr_weight(alpha_bar: jax.Array, gamma: float) -> jax.Array:
    """Min-SNR-γ weight of the ε-prediction loss, min(SNR, γ)/SNR with SNR = ᾱ/(1−ᾱ) (Hang et
    al. 2023, eq. 11 for ε); all ones when γ = 0."""
    if gamma == 0:
        return jnp.ones_like(alpha_bar)
    if gamma < 0:
        raise ValueError(f"train.snr_gamma must be >= 0 (0 turns the weighting off), got {gamma}.")
    snr = alpha_bar / (1 - alpha_bar)
    return jnp.minimum(snr, gamma) / snr


def build_models(config: ml_collections.ConfigDict, tokenizer_dir: str, seed: int):
    """The UNet and the text encoder of `config`, randomly initialised; writes the tokenizer
    (its vocabulary sets the encoder's) to `tokenizer_dir`."""
    size = vocab.write_tokenizer(tokenizer_dir, WORDS, config.text.max_length)
    text = dict(vocab_size=size, hidden_size=config.text.hidden_size, intermediate_size=config.text.intermediate_size,
                num_hidden_layers=config.text.num_hidden_layers, num_attention_heads=config.text.num_attention_heads,
                max_position_embeddings=config.text.max_length, bos_token_id=size - 2, eos_token_id=size - 1,
                pad_token_id=size - 1, hidden_act="quick_gelu", projection_dim=config.text.hidden_size)
    unet_cfg = {**config.unet.to_dict(), "cross_attention_dim": config.text.hidden_size,
                "in_channels": 3, "out_channels": 3, "sample_size": scene.RESOLUTION}
    rngs = nnx.Rngs(seed)
    return UNet2DConditionModel(unet_cfg, rngs=rngs), CLIPTextModel(text, rngs=rngs)


def write_folder(out: str, unet: UNet2DConditionModel, text_encoder: CLIPTextModel) -> None:
    """unet/, text_encoder/, scheduler/ and model_index.json (tokenizer/ is written at build);
    model_index.json last, so a folder that has it is complete."""
    unet.save_pretrained(os.path.join(out, "unet"))
    text_encoder.save_pretrained(os.path.join(out, "text_encoder"))
    os.makedirs(os.path.join(out, "scheduler"), exist_ok=True)
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER, f, indent=2)
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": [None, None], "safety_checker": [None, None], "feature_extractor": [None, None],
             "requires_safety_checker": False}
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)


def train_teacher(config: ml_collections.ConfigDict, out: str, *, print_fn=print) -> dict:
    """Train the teacher `config` describes and write its diffusers folder to `out` (which must
    not hold a model yet); returns the last logged row."""
    if os.path.exists(os.path.join(out, "model_index.json")):
        raise FileExistsError(f"{out} already holds a model (model_index.json); choose a new --out or move it aside.")
    t = config.train
    unet, text_encoder = build_models(config, os.path.join(out, "tokenizer"), t.seed)
    tokenizer = clip.load_tokenizer(out)
    prompts = scene.all_prompts()
    ids = jnp.asarray(clip.tokenize(tokenizer, prompts + [""], config.text.max_length))  # [P + 1, L]; last = empty

    graphdef, params = nnx.split((unet, text_encoder), nnx.Param)
    schedule = VPSchedule.from_config(SCHEDULER)
    alphas = jnp.asarray(schedule.alphas_cumprod, jnp.float32)
    lr = optax.warmup_cosine_decay_schedule(0.0, t.lr, t.warmup, t.steps, end_value=t.lr * 0.05)
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip), optax.adamw(lr, b1=0.9, b2=0.99, weight_decay=0.0))

    mesh = make_mesh((jax.device_count(), 1, 1))
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P(mesh.axis_names[0]))
    params = jax.device_put(params, replicated)
    state = {"params": params, "ema": jax.tree.map(jnp.copy, params), "opt": tx.init(params),
             "step": jnp.zeros((), jnp.int32)}

    def loss_fn(p, x0, caption, key):
        unet_m, text_m = nnx.merge(graphdef, p)
        k_t, k_eps = jax.random.split(key)
        tt = jax.random.randint(k_t, (x0.shape[0],), 0, alphas.shape[0])
        eps = jax.random.normal(k_eps, x0.shape)
        a = alphas[tt][:, None, None, None]
        xt = jnp.sqrt(a) * x0 + jnp.sqrt(1 - a) * eps
        context = text_m(ids[caption]).last_hidden_state
        mse = jnp.mean((unet_m(xt, tt, context) - eps) ** 2, axis=(1, 2, 3))
        return jnp.mean(min_snr_weight(alphas[tt], t.snr_gamma) * mse)

    def step_fn(state, x0, caption, key):
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], x0, caption, key)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        new = optax.apply_updates(state["params"], updates)
        # EMA with the usual warm-up (decay (1+n)/(10+n) until it reaches ema_decay), so the random
        # initialisation does not linger in a short run's average.
        n = state["step"].astype(jnp.float32)
        decay = jnp.minimum(t.ema_decay, (1 + n) / (10 + n))
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state["ema"], new)
        return {"params": new, "ema": ema, "opt": opt, "step": state["step"] + 1}, loss

    state_sharding = jax.tree.map(lambda _: replicated, state)
    step_jit = jax.jit(step_fn, in_shardings=(state_sharding, batch, batch, replicated),
                       out_shardings=(state_sharding, replicated), donate_argnums=0)
    rng = np.random.Generator(np.random.Philox(t.seed))
    key = jax.random.key(t.seed)
    log_path = os.path.join(out, "train_log.jsonl")
    start, losses, row = time.perf_counter(), [], {}
    with open(log_path, "w") as log:
        last = t.get("stop_after") or t.steps  # an early stop keeps the schedule of `steps`
        for i in range(1, last + 1):
            scenes = scene.sample_scenes(int(rng.integers(2**62)), t.batch_size)
            caption = scenes.kind * len(scene.COLOURS) + scenes.colour
            caption = np.where(rng.uniform(size=t.batch_size) < t.caption_dropout, len(prompts), caption)
            state, loss = step_jit(state, scenes.images, caption.astype(np.int32), jax.random.fold_in(key, i))
            losses.append(loss)
            if i % t.log_every == 0 or i == last:
                row = {"step": i, "loss": float(np.mean(jax.device_get(losses))), "lr": float(lr(i)),
                       "seconds": round(time.perf_counter() - start, 1)}
                losses = []
                log.write(json.dumps(row) + "\n")
                log.flush()
                print_fn(f"step {i}/{t.steps}  loss {row['loss']:.4f}  {row['seconds']:.0f} s")
            if i % t.save_every == 0 or i == last:  # the folder always holds the latest EMA
                write_folder(out, *nnx.merge(graphdef, jax.device_get(state["ema"])))
    return row
