"""The world's judge: a small CNN that reads kind, colour, centre and size back from an image.

    conv 3→32 (32²) → conv s2 32→64 (16²) → conv s2 64→64 (8²) → conv s2 64→64 (4²) → flatten
    → dense 1024→FEATURES (the feature space of the Fréchet distance) → heads:
       kind logits [3], colour logits [6], (x, y, size) regression (standardised)

Trained on fresh scenes of the procedural world (cross-entropy + MSE), written as
`config.json` + `model.safetensors` (PyTorch layout through `jaxdistill.models.weights`), and
shipped beside the teacher. `jaxdistill judge-train --config configs/world_judge.py --out dir`
rebuilds it.
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

from jaxdistill.models.layers import abstract_module, conv, dense
from jaxdistill.models.weights import load_params, module_tensors, open_weights, read_config, write_safetensors
from jaxdistill.world import scene

WEIGHTS = "model.safetensors"
# Standardisation of the regression targets: (value - mean) / scale, per (x, y, size).
_TARGET_MEAN = np.asarray([scene.RESOLUTION / 2, scene.RESOLUTION / 2, sum(scene.SIZE_RANGE) / 2], np.float32)
_TARGET_SCALE = np.asarray([8.0, 8.0, 3.0], np.float32)


class Judge(nnx.Module):
    def __init__(self, width: int = 32, features: int = 64, *, rngs: nnx.Rngs):
        self.width, self.features = width, features
        w = width
        self.conv_in = conv(3, w, 3, rngs=rngs)
        self.down = nnx.List([conv(w, 2 * w, 3, stride=2, rngs=rngs), conv(2 * w, 2 * w, 3, stride=2, rngs=rngs),
                              conv(2 * w, 2 * w, 3, stride=2, rngs=rngs)])
        self.proj = dense(2 * w * 16, features, rngs=rngs)
        self.kind = dense(features, len(scene.KINDS), rngs=rngs)
        self.colour = dense(features, len(scene.COLOURS), rngs=rngs)
        self.geometry = dense(features, 3, rngs=rngs)

    def features_of(self, images: jax.Array) -> jax.Array:
        x = jax.nn.silu(self.conv_in(images))
        for layer in self.down:
            x = jax.nn.silu(layer(x))
        return jax.nn.silu(self.proj(x.reshape(x.shape[0], -1)))

    def __call__(self, images: jax.Array) -> dict:
        """{"features" [B, F], "kind" logits, "colour" logits, "geometry" standardised (x, y, size)}."""
        f = self.features_of(images)
        return {"features": f, "kind": self.kind(f), "colour": self.colour(f), "geometry": self.geometry(f)}


def readout(judge: Judge, images) -> dict:
    """What the judge reads from images [N, 32, 32, 3] in [-1, 1], as numpy: predicted kind and
    colour indices, centre [N, 2] and size [N] in pixels, and the features [N, F]."""
    out = _readout_jit(nnx.split(judge), jnp.asarray(images, jnp.float32))
    out = jax.device_get(out)
    geometry = out["geometry"] * _TARGET_SCALE + _TARGET_MEAN
    return {"kind": out["kind"].argmax(-1), "colour": out["colour"].argmax(-1), "centre": geometry[:, :2],
            "size": geometry[:, 2], "features": out["features"]}


@jax.jit
def _readout_jit(split, images):
    return nnx.merge(*split)(images)


def save(judge: Judge, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    write_safetensors(os.path.join(folder, WEIGHTS), module_tensors(judge))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"_class_name": "WorldJudge", "width": judge.width, "features": judge.features}, f, indent=2)


def load(folder: str) -> Judge:
    """The judge in `folder` (config.json + model.safetensors)."""
    config = read_config(folder)
    abstract = abstract_module(lambda rngs: Judge(config["width"], config["features"], rngs=rngs))
    return load_params(abstract, open_weights(folder, stems=("model",)))


def train_judge(config: ml_collections.ConfigDict, out: str, *, print_fn=print) -> dict:
    """Train a judge on fresh scenes and write it to `out`; returns its accuracy on held-out scenes."""
    if os.path.exists(os.path.join(out, WEIGHTS)):
        raise FileExistsError(f"{out} already holds a judge ({WEIGHTS}); choose a new --out or move it aside.")
    t = config.train
    judge = Judge(config.width, config.features, rngs=nnx.Rngs(t.seed))
    graphdef, params = nnx.split(judge, nnx.Param)
    tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, t.lr, t.warmup, t.steps, end_value=t.lr * 0.02))
    opt = tx.init(params)

    def loss_fn(p, images, kind, colour, geometry):
        out = nnx.merge(graphdef, p)(images)
        ce = optax.softmax_cross_entropy_with_integer_labels
        return (jnp.mean(ce(out["kind"], kind)) + jnp.mean(ce(out["colour"], colour))
                + jnp.mean((out["geometry"] - geometry) ** 2))

    @jax.jit
    def step(p, opt, images, kind, colour, geometry):
        loss, g = jax.value_and_grad(loss_fn)(p, images, kind, colour, geometry)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    start = time.perf_counter()
    for i in range(1, t.steps + 1):
        s = scene.sample_scenes(t.seed * 1_000_003 + i, t.batch_size)
        geometry = (np.concatenate([s.centre, s.size[:, None]], 1) - _TARGET_MEAN) / _TARGET_SCALE
        params, opt, loss = step(params, opt, s.images, s.kind, s.colour, geometry.astype(np.float32))
        if i % t.log_every == 0 or i == t.steps:
            print_fn(f"step {i}/{t.steps}  loss {float(loss):.4f}  {time.perf_counter() - start:.0f} s")
    judge = nnx.merge(graphdef, params)
    held_out = scene.sample_scenes(t.seed + 7_777_777, t.eval_size)
    r = readout(judge, held_out.images)
    report = {"kind_accuracy": float(np.mean(r["kind"] == held_out.kind)),
              "colour_accuracy": float(np.mean(r["colour"] == held_out.colour)),
              "both_accuracy": float(np.mean((r["kind"] == held_out.kind) & (r["colour"] == held_out.colour))),
              "centre_mae_px": float(np.mean(np.abs(r["centre"] - held_out.centre))),
              "size_mae_px": float(np.mean(np.abs(r["size"] - held_out.size))),
              "eval_size": t.eval_size, "steps": t.steps, "seconds": round(time.perf_counter() - start, 1)}
    save(judge, out)
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(report, f, indent=2)
    print_fn("held-out: " + json.dumps(report))
    return report
