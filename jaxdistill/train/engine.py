"""`Distiller`: builds the mesh shardings and the state, compiles the step once, and runs it."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdistill.generator import generate
from jaxdistill.methods import MethodSpec
from jaxdistill.models.target import compiling_for, jit_for
from jaxdistill.train import sharding as shd
from jaxdistill.train.checkpoint import Checkpointer, abstract_like
from jaxdistill.train.state import TrainState, init_state, make_optimizer
from jaxdistill.train.step import Problem, make_objectives, make_train_step, split_networks


class Distiller:
    """One distillation run: `spec` (the method), `problem` (teacher + conditions) and NNX
    generator / critic (/ discriminator head) modules, used functionally from here on.

    `abstract=True` keeps only the state's shapes, dtypes and shardings (nothing is allocated;
    the modules may be abstract, from `nnx.eval_shape`): enough to compile the step for any
    devices, including a TPU topology without its hardware (`jaxdistill info --topology`), but
    not to run it.

    `microbatches` > 1 accumulates each update's gradient over that many microbatches of
    batch_size / microbatches samples (SiD's `batch_gpu`): the same optimizer steps with one
    microbatch's activations at a time."""

    def __init__(
        self,
        spec: MethodSpec,
        problem: Problem,
        generator: nnx.Module,
        critic: nnx.Module,
        head: nnx.Module | None = None,
        *,
        batch_size: int,
        microbatches: int = 1,
        mesh=None,
        rules=shd.DEFAULT_RULES,
        seed: int = 0,
        gen_tx=None,
        critic_tx=None,
        on_teacher: bool = False,
        abstract: bool = False,
        teacher_specs: Any = None,
    ):
        self.spec, self.problem, self.batch_size = spec, problem, batch_size
        self.teacher_specs = teacher_specs
        self.mesh = mesh if mesh is not None else shd.make_mesh((1, 1, 1), jax.devices()[:1])
        shd.check_batch(batch_size, self.mesh, microbatches)
        self.nets, gen_params, critic_params = split_networks(
            generator, critic, head, problem.teacher_apply if on_teacher else None)
        self.gen_tx = gen_tx or make_optimizer(spec.gen_lr, b1=spec.adam_b1, b2=spec.adam_b2,
                                               weight_decay=spec.weight_decay, grad_clip=spec.grad_clip)
        self.critic_tx = critic_tx or make_optimizer(spec.critic_lr, b1=spec.adam_b1, b2=spec.adam_b2,
                                                     weight_decay=spec.weight_decay, grad_clip=spec.grad_clip)
        gen_specs = shd.param_specs(generator, rules)
        critic_specs = {"net": shd.param_specs(critic, rules)}
        if head is not None:
            critic_specs["head"] = shd.param_specs(head, rules)
        shd.check_divisible(gen_params, gen_specs, self.mesh)
        shd.check_divisible(critic_params, critic_specs, self.mesh)
        self.state_specs = TrainState(
            gen=gen_specs, critic=critic_specs, ema=gen_specs,
            gen_opt=shd.opt_state_specs(self.gen_tx, gen_params, gen_specs),
            critic_opt=shd.opt_state_specs(self.critic_tx, critic_params, critic_specs),
            step=P(), key=P())
        self.state_sharding = shd.named(self.mesh, self.state_specs)
        if abstract:
            shapes = jax.eval_shape(lambda g, c: init_state(g, c, self.gen_tx, self.critic_tx, seed),
                                    gen_params, critic_params)
            self.state = abstract_like(shapes, self.state_sharding)
        else:
            state = init_state(gen_params, critic_params, self.gen_tx, self.critic_tx, seed)
            self.state = _unaliased(jax.device_put(state, self.state_sharding))
        batch = shd.batch_sharding(self.mesh)
        constrain = lambda x: jax.lax.with_sharding_constraint(x, batch)  # noqa: E731
        step = make_train_step(spec, problem, self.nets, self.gen_tx, self.critic_tx, batch_size,
                               constrain=constrain, microbatches=microbatches)
        # The step's losses, on one microbatch.
        self.objectives = make_objectives(spec, problem, self.nets, batch_size // microbatches, constrain)
        self.trace_count = 0

        def counted_step(state, teacher_params):  # the compile-once guard, per Distiller
            self.trace_count += 1
            if self.trace_count > 1:
                raise AssertionError(f"the train step was traced {self.trace_count} times; it must compile once.")
            return step(state, teacher_params)

        self._step_fn = counted_step
        self._samplers = {}
        self._compiled = None
        self.compile_seconds = None

    def abstract_state(self) -> TrainState:
        """The state's shapes and dtypes on this run's shardings (the restore target)."""
        return abstract_like(self.state, self.state_sharding)

    def save(self, checkpointer: Checkpointer, config: dict | None = None, *, force: bool = False) -> bool:
        """Start an asynchronous save of the state at its current step."""
        return checkpointer.save(int(self.state.step), self.state, config, force=force)

    def restore(self, checkpointer: Checkpointer, step: int | None = None) -> dict:
        """Replace the state by a checkpoint's (latest by default), placed on this run's mesh;
        returns the checkpoint's config."""
        self.state, config = checkpointer.restore(self.abstract_state(), step)
        return config

    def teacher_sharding(self, teacher_params: Any) -> Any:
        """The frozen teacher's placement (never in an optimizer or a checkpoint): `teacher_specs`
        when given (a UNet teacher is sharded by the same rules as its copies, so an SDXL teacher
        does not fill every chip), else replicated."""
        if self.teacher_specs is None:
            return jax.tree.map(lambda _: NamedSharding(self.mesh, P()), teacher_params)
        return shd.named(self.mesh, self.teacher_specs)

    def lower(self, teacher_params: Any):
        """The step lowered for this mesh's devices (explicit shardings, donated state), not compiled."""
        t_sh = self.teacher_sharding(teacher_params)
        jitted = jax.jit(self._step_fn, in_shardings=(self.state_sharding, t_sh),
                         out_shardings=(self.state_sharding, NamedSharding(self.mesh, P())), donate_argnums=0)
        with compiling_for(self.mesh):  # attention and convolution kernels, batch constraints for this mesh
            return jitted.lower(self.state, teacher_params)

    def compile(self, teacher_params: Any, compiler_options: dict | None = None):
        """Lower and compile the step once; `compiler_options` are XLA options for this
        compilation (e.g. a cheaper CPU optimisation level in tests)."""
        if self._compiled is None:
            start = time.perf_counter()
            self._compiled = self.lower(teacher_params).compile(compiler_options or None)
            self.compile_seconds = time.perf_counter() - start
        return self._compiled

    def run(self, teacher_params: Any, num_steps: int, log_every: int = 0) -> list[dict]:
        """Run `num_steps` iterations; returns the metrics of every `log_every`-th step (host floats)."""
        step = self.compile(teacher_params)
        teacher_params = jax.device_put(teacher_params, self.teacher_sharding(teacher_params))
        history = []
        for i in range(num_steps):
            self.state, metrics = step(self.state, teacher_params)
            if log_every and (i + 1) % log_every == 0:
                history.append({k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()})
        return history

    def sample(self, key: jax.Array, cond: Any, teacher_params: Any = None, *, num_steps: int | None = None,
               use_ema: bool = True) -> jax.Array:
        """Generate one sample per condition with the first `num_steps` (default K) ladder steps
        (`teacher_params` are needed when the networks are residuals on the teacher)."""
        params = self.state.ema if use_ema else self.state.gen
        n = jax.tree.leaves(cond)[0].shape[0]
        k_z, k_n = jax.random.split(key)
        z = jax.random.normal(k_z, (n,) + tuple(self.problem.event_shape))
        return self._sampler(num_steps, per_seed=False)(params, teacher_params, z, cond, k_n)

    def sample_seeds(self, seeds: Any, cond: Any, teacher_params: Any = None, *, num_steps: int | None = None,
                     use_ema: bool = True) -> jax.Array:
        """One sample per (seed, condition): sample i depends only on seeds[i] and its condition,
        so a fixed seed list gives comparable pictures at every step and any batch size."""
        params = self.state.ema if use_ema else self.state.gen
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
        return self._sampler(num_steps, per_seed=True)(params, teacher_params, keys, cond)

    def _sampler(self, num_steps, per_seed: bool):
        if (num_steps, per_seed) not in self._samplers:
            def run(params, teacher_params, z, cond, k_n):
                return generate(lambda x, s: self.nets.gen_apply(params, teacher_params, x, s, cond), z,
                                self.spec.sigma_ladder, k_n, num_steps=num_steps)

            def run_one(params, teacher_params, key, cond):
                k_z, k_n = jax.random.split(key)
                z = jax.random.normal(k_z, (1,) + tuple(self.problem.event_shape))
                return run(params, teacher_params, z, jax.tree.map(lambda c: c[None], cond), k_n)[0]

            fn = jax.vmap(run_one, in_axes=(None, None, 0, 0)) if per_seed else run
            # Replicated output: readable on the host in every process of a multi-process run.
            self._samplers[(num_steps, per_seed)] = jit_for(self.mesh, fn, out_shardings=NamedSharding(self.mesh, P()))
        return self._samplers[(num_steps, per_seed)]


def _unaliased(state: Any) -> Any:
    """The state with every leaf in its own buffer: generator and critic copied from one teacher
    share arrays, and a donated step may not receive one buffer twice."""
    seen = set()

    def own(x):
        buffers = tuple(s.data.unsafe_buffer_pointer() for s in x.addressable_shards)
        if buffers in seen:
            return jnp.copy(x)
        seen.add(buffers)
        return x

    return jax.tree.map(own, state)
