"""One compiled two-timescale iteration (design §5): `n_critic` critic updates in a `lax.scan`,
one generator update, the EMA update — in the order the method says.

- critic first (SiD): the critic trains on fresh detached generator samples, then the generator
  trains against the updated critic on fresh samples.
- generator first (DMD2 `train_one_step`): the generator trains, then the first critic update
  uses the same (detached) generator batch and the remaining n_critic − 1 use fresh ones.

Both phases of an iteration share one k ~ U{1..K} (few-step SiD). Non-finite samples are
masked out of every loss (their count is a metric) and gradients pass through
`nan_to_num(nan=0, posinf=1e5, neginf=−1e5)` as the SiD code does.

With `microbatches` > 1 each of these updates accumulates its gradient over microbatches run one
after another (`_microbatched`), as the SiD code's `batch_gpu` rounds do: the published global
batch on fewer or smaller chips, at the cost of that many sequential passes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxdistill import losses
from jaxdistill.generator import generate_train
from jaxdistill.losses._common import noised
from jaxdistill.guidance import drop_conditions, guided
from jaxdistill.methods import MethodSpec
from jaxdistill.noise_levels import get_noise_level
from jaxdistill.train.state import TrainState

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class Problem:
    """What is distilled: the frozen teacher and where (data-free) conditions come from.

    teacher_apply(teacher_params, x, σ, cond) -> x̂_0; sample_conditions(teacher_params, key, n) ->
    (cond, uncond) (conditions may live in the teacher's pytree, e.g. a bank of prompt embeddings);
    sample_real(key, cond) -> x_0 (only for a discriminator trained on real data).
    """

    event_shape: tuple
    teacher_apply: Callable
    sample_conditions: Callable
    sample_real: Optional[Callable] = None


@dataclasses.dataclass(frozen=True)
class Networks:
    """Graph definitions of the trained networks; parameters travel separately as pure dicts.

    With `on_teacher=True` the generator's and critic's outputs are corrections added to the
    frozen teacher's x̂_0 (networks built with `residual=True`, zero at initialisation): at step 0
    the generator is the teacher's one-step denoiser from σ_init and the critic equals the
    teacher — what initialising both from the teacher's weights does in SiD/DMD2 when teacher
    and student share an architecture, available here for teachers (e.g. analytic mixtures)
    whose weights an MLP cannot copy.
    """

    gen: Any
    critic: Any
    head: Any = None
    teacher_apply: Optional[Callable] = None  # set when the networks are residuals on the teacher

    def _base(self, teacher_params, x, sigma, cond):
        return 0.0 if self.teacher_apply is None else self.teacher_apply(teacher_params, x, sigma, cond)

    def gen_apply(self, params, teacher_params, x, sigma, cond):
        return nnx.merge(self.gen, params)(x, sigma, cond) + self._base(teacher_params, x, sigma, cond)

    def critic_forward(self, params, teacher_params, x, sigma, cond):
        x0, feats = nnx.merge(self.critic, params["net"]).forward(x, sigma, cond)
        return x0 + self._base(teacher_params, x, sigma, cond), feats

    def critic_apply(self, params, teacher_params, x, sigma, cond):
        return self.critic_forward(params, teacher_params, x, sigma, cond)[0]

    def logits(self, params, feats):
        return nnx.merge(self.head, params["head"])(feats)


def split_networks(generator: nnx.Module, critic: nnx.Module, head: nnx.Module | None = None,
                   teacher_apply: Optional[Callable] = None):
    """(Networks, generator params, critic params {"net", ["head"]}) from NNX modules; pass
    `teacher_apply` to make generator and critic residuals on the teacher (see `Networks`)."""
    g_def, g_params = nnx.split(generator, nnx.Param)
    c_def, c_params = nnx.split(critic, nnx.Param)
    critic_params = {"net": nnx.to_pure_dict(c_params)}
    h_def = None
    if head is not None:
        h_def, h_params = nnx.split(head, nnx.Param)
        critic_params["head"] = nnx.to_pure_dict(h_params)
    return Networks(g_def, c_def, h_def, teacher_apply), nnx.to_pure_dict(g_params), critic_params


# The name scopes of a critic and a generator update in the compiled step's HLO metadata
# (`costs.loop_costs` files each kernel's traffic under them).
UPDATE_SCOPES = ("critic_update", "generator_update")


def _sanitize(grads):
    return jax.tree.map(lambda g: jnp.nan_to_num(g, nan=0.0, posinf=1e5, neginf=-1e5), grads)


def _masked_mean(per_sample, *arrays):
    valid = jnp.isfinite(per_sample)
    for a in arrays:
        valid &= jnp.all(jnp.isfinite(a.reshape(a.shape[0], -1)), axis=1)
    total = jnp.sum(jnp.where(valid, per_sample, 0.0))
    return total / jnp.maximum(jnp.sum(valid), 1), jnp.sum(~valid)


def _apply_update(tx, params, opt_state, grads, prefix):
    grads = _sanitize(grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    metrics = {f"{prefix}_grad_norm": optax.tree.norm(grads), f"{prefix}_update_norm": optax.tree.norm(updates),
               f"{prefix}_param_norm": optax.tree.norm(new)}
    return new, opt_state, metrics


@dataclasses.dataclass(frozen=True)
class Objectives:
    """The differentiable pieces of the train step, for callers that want the losses and their
    gradients without the optimizers (numerical checks, custom loops):

    sample_generator(gen_params, teacher_params, key, k) -> (x_g, cond, uncond)
    critic_loss(critic_params, teacher_params, x_g, cond, uncond, key) -> (loss, metrics)
    gen_loss(gen_params, critic_params, teacher_params, key, k) -> (loss, (metrics, sg(x_g), cond, uncond))
    """

    sample_generator: Callable
    critic_loss: Callable
    gen_loss: Callable


def make_objectives(spec: MethodSpec, problem: Problem, nets: Networks, batch_size: int,
                    constrain: Callable = lambda x: x) -> Objectives:
    """The generator's and critic's losses of `spec` (see `Objectives`); `constrain` as in
    `make_train_step`."""
    kernel = functools.partial(spec.kernel_fn, **spec.kernel_kwargs)
    gen_noise = get_noise_level(spec.gen_noise[0], **spec.gen_noise[1])
    critic_noise = get_noise_level(spec.critic_noise[0], **spec.critic_noise[1])
    ladder = jnp.asarray(spec.sigma_ladder, jnp.float32)
    g = spec.guidance
    b = batch_size
    shape = (b,) + tuple(problem.event_shape)

    def constrain_tree(tree):
        return jax.tree.map(constrain, tree)

    def sample_generator(gen_params, teacher_params, key, k):
        k_c, k_z, k_n = jax.random.split(key, 3)
        cond, uncond = constrain_tree(problem.sample_conditions(teacher_params, k_c, b))
        z = constrain(jax.random.normal(k_z, shape))
        x_g = generate_train(lambda x, s: nets.gen_apply(gen_params, teacher_params, x, s, cond), z, ladder, k, k_n)
        return x_g, cond, uncond

    def critic_loss(critic_params, teacher_params, x_g, cond, uncond, key):
        k_s, k_n, k_d, k_r = jax.random.split(key, 4)
        sigma = constrain(critic_noise(k_s, b))
        noise = constrain(jax.random.normal(k_n, shape))
        train_cond = drop_conditions(k_d, cond, uncond, g.prompt_dropout)
        den = guided(lambda x, s, c: nets.critic_apply(critic_params, teacher_params, x, s, c), train_cond, uncond,
                     g.cfg_fake_train)
        per_sample, _ = losses.score_matching(sg(x_g), noise, sigma, den, weighting=spec.dsm_weighting)
        metrics = {}
        if spec.discriminator:
            # SiDA: real and fake share σ and the noise tensor; the head reads the critic's features.
            x_real = constrain(problem.sample_real(k_r, cond))
            feats_real = nets.critic_forward(critic_params, teacher_params, noised(x_real, noise, sigma), sigma,
                                             cond)[1]
            feats_fake = nets.critic_forward(critic_params, teacher_params, noised(sg(x_g), noise, sigma), sigma,
                                             cond)[1]
            d = losses.discriminator_loss(nets.logits(critic_params, feats_real),
                                          nets.logits(critic_params, feats_fake))
            metrics["disc_loss"] = jnp.mean(d)
            per_sample = per_sample + spec.disc_weight * d
        loss, masked = _masked_mean(per_sample, x_g)
        return loss, {"critic_loss": loss, "critic_masked": masked, **metrics}

    def gen_loss(gen_params, critic_params, teacher_params, key, k):
        k_g, k_s, k_n = jax.random.split(key, 3)
        x_g, cond, uncond = sample_generator(gen_params, teacher_params, k_g, k)
        sigma = constrain(gen_noise(k_s, b))
        noise = constrain(jax.random.normal(k_n, shape))
        real = guided(lambda x, s, c: problem.teacher_apply(teacher_params, x, s, c), cond, uncond, g.cfg_teacher)
        fake = guided(lambda x, s, c: nets.critic_apply(critic_params, teacher_params, x, s, c), cond, uncond,
                      g.cfg_fake_eval)
        extra = {}
        uses_logits = spec.discriminator and (spec.kernel == "fdistill" or spec.gen_adv_weight > 0)
        if uses_logits:
            feats = nets.critic_forward(critic_params, teacher_params, noised(x_g, noise, sigma), sigma, cond)[1]
            logits = nets.logits(critic_params, feats)
            if spec.kernel == "fdistill":
                extra = {"logits": sg(logits)}
        per_sample, aux = kernel(x_g, noise, sigma, real, fake, **extra)
        metrics = {"gen_scale": jnp.mean(aux["scale"]), "delta_abs": jnp.mean(aux["delta_abs"])}
        if uses_logits and spec.gen_adv_weight > 0:
            adv = losses.generator_adversarial_loss(logits)
            metrics["gen_adv_loss"] = jnp.mean(adv)
            per_sample = per_sample + spec.gen_adv_weight * adv
        loss, masked = _masked_mean(per_sample, x_g)
        metrics.update(gen_loss=loss, gen_masked=masked, sigma_mean=jnp.mean(sigma), sigma_min=jnp.min(sigma),
                       sigma_max=jnp.max(sigma))
        return loss, (metrics, sg(x_g), cond, uncond)

    return Objectives(sample_generator, critic_loss, gen_loss)


def _reduce_metric(name: str, values: jax.Array) -> jax.Array:
    """One step's value of a metric measured on each microbatch: counts (`*_masked`) add up,
    extremes (`*_min`, `*_max`) stay extremes, everything else is averaged."""
    if name.endswith("_masked"):
        return jnp.sum(values)
    if name.endswith("_min"):
        return jnp.min(values)
    if name.endswith("_max"):
        return jnp.max(values)
    return jnp.mean(values)


def _microbatched(grads_of: Callable, microbatches: int) -> Callable:
    """Gradient accumulation. `grads_of(params, key, inputs) -> (grads, metrics, outputs)` on
    one microbatch becomes the same on `microbatches` of them, run one after another in a
    `lax.scan` so that only one microbatch's activations are live: microbatch m draws its
    randomness from fold_in(key, m) and reads inputs[m] (inputs stacked on a leading axis, or
    None); the gradients are averaged (summed in the parameters' dtype), the metrics reduced by
    `_reduce_metric` and the outputs stacked on a leading axis. Each microbatch's loss is its own
    (masked) mean, so the step's gradient is the full batch's when no sample is masked. One
    microbatch is `grads_of` itself, with `key` unchanged."""
    if microbatches == 1:
        return grads_of

    def run(params, key, inputs):
        def one(total, m_and_inputs):
            m, x = m_and_inputs
            grads, metrics, outputs = grads_of(params, jax.random.fold_in(key, m), x)
            return jax.tree.map(jnp.add, total, grads), (metrics, outputs)

        zeros = jax.tree.map(jnp.zeros_like, params)
        total, (metrics, outputs) = jax.lax.scan(one, zeros, (jnp.arange(microbatches), inputs))
        grads = jax.tree.map(lambda g: g / microbatches, total)
        return grads, {name: _reduce_metric(name, v) for name, v in metrics.items()}, outputs

    return run


def make_train_step(
    spec: MethodSpec,
    problem: Problem,
    nets: Networks,
    gen_tx: optax.GradientTransformation,
    critic_tx: optax.GradientTransformation,
    batch_size: int,
    constrain: Callable = lambda x: x,
    microbatches: int = 1,
):
    """`step(state, teacher_params) -> (state, metrics)`, pure and jit-able.

    `constrain` is applied to every batch-shaped array created inside the step (the trainer
    passes a sharding constraint over ('data', 'fsdp')). With `microbatches` > 1 every update's
    gradient is accumulated over that many microbatches of batch_size / microbatches samples
    (`_microbatched`): the activations of one microbatch at a time, the same optimizer steps.
    """
    if spec.discriminator and (nets.head is None or problem.sample_real is None):
        raise ValueError(f"method {spec.name!r} trains a discriminator: pass a head network and problem.sample_real.")
    if microbatches < 1 or batch_size % microbatches:
        raise ValueError(f"microbatches={microbatches} must be a positive divisor of batch_size={batch_size}.")
    objectives = make_objectives(spec, problem, nets, batch_size // microbatches, constrain)
    sample_generator, critic_loss, gen_loss = objectives.sample_generator, objectives.critic_loss, objectives.gen_loss

    def critic_update(critic_params, critic_opt, teacher_params, key, samples=None, fresh_from=None):
        """One critic optimizer step on `samples` (x_g, cond, uncond), or on samples drawn from the
        generator `fresh_from` = (gen_params, k) for each microbatch."""
        def grads_of(params, key, samples):
            if fresh_from is not None:
                k_g, key = jax.random.split(key)
                samples = sample_generator(sg(fresh_from[0]), teacher_params, k_g, fresh_from[1])
            x_g, cond, uncond = samples
            grads, metrics = jax.grad(critic_loss, has_aux=True)(params, teacher_params, sg(x_g), cond, uncond, key)
            return grads, metrics, None

        with jax.named_scope(UPDATE_SCOPES[0]):
            grads, metrics, _ = _microbatched(grads_of, microbatches)(critic_params, key, samples)
            critic_params, critic_opt, m = _apply_update(critic_tx, critic_params, critic_opt, grads, "critic")
        return critic_params, critic_opt, {**metrics, **m}

    def fresh_critic_update(gen_params, teacher_params, k, carry, key):
        critic_params, critic_opt = carry
        critic_params, critic_opt, m = critic_update(critic_params, critic_opt, teacher_params, key,
                                                     fresh_from=(gen_params, k))
        return (critic_params, critic_opt), m

    def gen_update(state, critic_params, teacher_params, key, k):
        def grads_of(params, key, _):
            grads, (metrics, x_g, cond, uncond) = jax.grad(gen_loss, has_aux=True)(
                params, critic_params, teacher_params, key, k)
            return grads, metrics, (x_g, cond, uncond)

        with jax.named_scope(UPDATE_SCOPES[1]):
            grads, metrics, samples = _microbatched(grads_of, microbatches)(state.gen, key, None)
            gen, gen_opt, m = _apply_update(gen_tx, state.gen, state.gen_opt, grads, "gen")
        return gen, gen_opt, {**metrics, **m}, samples

    def critic_phase(gen_params, critic_params, critic_opt, teacher_params, keys, k):
        (critic_params, critic_opt), ms = jax.lax.scan(
            functools.partial(fresh_critic_update, gen_params, teacher_params, k), (critic_params, critic_opt), keys)
        return critic_params, critic_opt, jax.tree.map(jnp.mean, ms)

    def step(state: TrainState, teacher_params) -> tuple[TrainState, dict]:
        key, k_iter = jax.random.split(jax.random.wrap_key_data(state.key))
        k_k, k_crit, k_gen, k_first = jax.random.split(k_iter, 4)
        k = jax.random.randint(k_k, (), 1, spec.num_steps + 1)
        crit_keys = jax.random.split(k_crit, spec.n_critic)
        if spec.order == "critic_first":
            critic, critic_opt, c_metrics = critic_phase(state.gen, state.critic, state.critic_opt, teacher_params,
                                                         crit_keys, k)
            gen, gen_opt, g_metrics, _ = gen_update(state, critic, teacher_params, k_gen, k)
        else:
            gen, gen_opt, g_metrics, samples = gen_update(state, state.critic, teacher_params, k_gen, k)
            critic, critic_opt, first = critic_update(state.critic, state.critic_opt, teacher_params, k_first, samples)
            c_metrics = first
            if spec.n_critic > 1:
                critic, critic_opt, rest = critic_phase(gen, critic, critic_opt, teacher_params, crit_keys[1:], k)
                c_metrics = jax.tree.map(lambda a, r: (a + (spec.n_critic - 1) * r) / spec.n_critic, first, rest)
        ema = jax.tree.map(lambda e, p: spec.ema_decay * e + (1 - spec.ema_decay) * p, state.ema, gen)
        new_state = TrainState(gen=gen, critic=critic, ema=ema, gen_opt=gen_opt, critic_opt=critic_opt,
                               step=state.step + 1, key=jax.random.key_data(key))
        return new_state, {**c_metrics, **g_metrics, "k": k}

    return step

