"""The training program behind `jaxdistill train`, and the run loading behind `sample`, `eval`,
`export` and `info`.

    workdir/
      checkpoints/<step>/{state,config}   orbax; the latest complete one is resumed automatically
      config.json                         the resolved config of the run
      metrics.jsonl                       one JSON line per logged step
      tensorboard/                        the same scalars and the sample grids as event files
      samples/samples_<step>.png          fixed-seed sample pictures every `train.sample_every` steps

SIGTERM/SIGINT finish the current step, save a checkpoint and return. Losses that stay
non-finite for `train.max_nonfinite_steps` consecutive steps stop the run with an error naming
the step; the last good checkpoint is left as it is (no checkpoint is written while the latest
losses are non-finite). Host-side bookkeeping runs one step behind the device: step n+1 is
dispatched before step n's losses are read, so the host never idles the accelerator between
checkpoints.

Multi-process runs (`jaxdistill.distributed`) run this same program in every process over one
global mesh. There is no host-fed data: each step draws its noise, timesteps and conditions
(labels, or rows of the prompt bank) inside the compiled step from the global RNG key in the
state, so every process computes the same global batch and the streams equal a one-process run
of the same config. Process 0 alone prints and writes config.json, metrics, events and
pictures; every process takes part in the (orbax) checkpoint, which restores onto any mesh or
process count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdistill.eval.mixture_metrics import evaluate
from jaxdistill.eval.render import render_samples
from jaxdistill.methods import ladder_within
from jaxdistill.models.target import jit_for
from jaxdistill.recipes import STATE_DEFINING, build_spec
from jaxdistill.teachers import ring_mixture
from jaxdistill.toy import toy_distiller
from jaxdistill.train.checkpoint import Checkpointer
from jaxdistill.train.engine import Distiller
from jaxdistill.train.metric_writer import MetricWriter
from jaxdistill.train import sharding as shd


class RunError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


@dataclasses.dataclass
class Run:
    """A built run: its config, the frozen teacher's parameters and the `Distiller` holding the
    state. Subclasses know their teacher kind's conditions, pictures and metrics."""

    config: ml_collections.ConfigDict
    teacher: Any
    distiller: Distiller

    @property
    def resolved(self) -> dict:
        return json.loads(self.config.to_json())

    def conditions(self, n: int) -> Any:
        raise NotImplementedError

    def picture(self, seeds, num_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def evaluate(self, num: int, num_steps: int | None = None, seed: int = 1) -> dict:
        raise NotImplementedError

    def student_samples(self, seeds, num_steps: int | None = None):
        """The EMA generator's samples (latents for SD) from each seed's noise, with the
        conditions `conditions` gives; `num_steps` of a few-step generator (all by default)."""
        return self.distiller.sample_seeds(seeds, self.conditions(len(seeds)), self.teacher, num_steps=num_steps)


class MixtureRun(Run):
    """An analytic Gaussian-mixture teacher: exact metrics, density plots."""

    def conditions(self, n: int) -> jax.Array:
        """Class labels cycled 0..C−1 (all 0 when unconditional)."""
        classes = max(int(self.teacher.num_classes), 1)
        return jnp.arange(n, dtype=jnp.int32) % classes

    def picture(self, seeds, num_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(samples, uint8 density plot) of the EMA generator at `seeds`, over exact teacher samples."""
        x = np.asarray(self.student_samples(seeds, num_steps))
        return x, render_samples(x, self._reference)

    @functools.cached_property
    def _reference(self) -> np.ndarray:
        """Exact teacher samples drawn once: the grey background of every density plot."""
        return np.asarray(self.teacher.sample(jax.random.key(0), 4096))

    def evaluate(self, num: int, num_steps: int | None = None, seed: int = 1) -> dict:
        """Metrics of the EMA generator against the exact teacher, per class for conditional teachers."""
        classes = [None] if self.teacher.num_classes <= 1 else list(range(self.teacher.num_classes))
        rows = {}
        for label in classes:
            cond = jnp.full((num,), 0 if label is None else label, jnp.int32)
            x = self.distiller.sample(jax.random.key(seed), cond, self.teacher, num_steps=num_steps)
            r = evaluate(x, self.teacher, seed=seed, label=label)
            rows["all" if label is None else f"class_{label}"] = {
                "max_rel_weight_err": r["max_rel_weight_err"], "mmd2_over_floor": r["mmd2"] / r["mmd2_floor"],
                "mean_log_p": r["mean_log_p"], "exact_mean_log_p": r["exact_mean_log_p"],
                "weights": [round(float(w), 4) for w in r["weights"]],
                "exact_weights": [round(float(w), 4) for w in r["exact_weights"]]}
        steps = num_steps or self.distiller.spec.num_steps
        return {"step": int(self.distiller.state.step), "generator_steps": steps, "samples": num, **rows}


@dataclasses.dataclass
class SDRun(Run):
    """A Stable Diffusion teacher: latents decoded by the folder's VAE for pictures; metrics
    against the teacher's own guided DDIM sampler from the same noise and prompts."""

    sd: Any = None
    prompts: list = dataclasses.field(default_factory=list)
    judge: Any = None  # the embedded world's judge when `teacher.judge` names one: image metrics in `evaluate`
    _teacher_samplers: dict = dataclasses.field(default_factory=dict, repr=False)

    def conditions(self, n: int) -> dict:
        from jaxdistill.teachers.stable_diffusion import conditions_for

        return conditions_for(self.teacher["prompts"], n, len(self.prompts))

    @functools.cached_property
    def decode(self):
        """Latents -> images (the folder's VAE; identity scaling for a pixel-space teacher),
        compiled once per run."""
        return jax.jit(self.sd.images_from_latents)

    def picture(self, seeds, num_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(self.decode(self.student_samples(seeds, num_steps)))
        return images, render_samples(images)

    def _teacher_sampler(self, teacher_steps: int, scale: float):
        """The teacher's DDIM with CFG `scale` from the noise z (the student's own noise),
        compiled once per (step count, scale)."""
        if (teacher_steps, scale) in self._teacher_samplers:
            return self._teacher_samplers[teacher_steps, scale]
        from jaxdistill.diffusion import ddim
        from jaxdistill.guidance import guided

        d = self.distiller
        sigmas = self.sd.schedule.sampling_sigmas(teacher_steps, spacing="trailing")

        def run(teacher, z, cond, null):
            den = guided(lambda x, s, c: d.problem.teacher_apply(teacher, x, s, c), cond, null, scale)
            return ddim(den, z * float(np.sqrt(sigmas[0] ** 2 + 1)) / float(sigmas[0]), sigmas)

        self._teacher_samplers[teacher_steps, scale] = jit_for(d.mesh, run)
        return self._teacher_samplers[teacher_steps, scale]

    def teacher_samples(self, seeds, teacher_steps: int = 25, scale: float | None = None) -> np.ndarray:
        """The teacher's guided DDIM latents from the noise the student gets at `seeds` (its
        first noise draw) and the same prompts; CFG `scale` defaults to the method's teacher scale."""
        d = self.distiller
        n = len(seeds)
        cond = self.conditions(n)
        null = jax.tree.map(lambda a: jnp.broadcast_to(a[0], (n,) + a.shape[1:]), self.teacher["prompts"]["null"])
        keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
        z = jax.vmap(lambda k: jax.random.normal(jax.random.split(k)[0], d.problem.event_shape))(keys)
        scale = float(d.spec.guidance.cfg_teacher if scale is None else scale)
        return np.asarray(self._teacher_sampler(teacher_steps, scale)(self.teacher, z, cond, null))

    def evaluate(self, num: int, num_steps: int | None = None, seed: int = 1, teacher_steps: int = 25) -> dict:
        """Latent distance to the teacher's guided DDIM samples (same noise and prompts: the
        one-step map's error against the ODE it distils), and the latents' statistics beside
        the teacher's. With a judge (the embedded world), also alignment, diversity and FD of
        student and teacher images (`jaxdistill.world.metrics`)."""
        d = self.distiller
        seeds = np.arange(seed * 100_000, seed * 100_000 + num)
        student = np.asarray(self.student_samples(seeds, num_steps))
        reference = self.teacher_samples(seeds, teacher_steps)
        scale = d.spec.guidance.cfg_teacher
        out = {"step": int(d.state.step), "generator_steps": num_steps or d.spec.num_steps, "samples": num,
               "teacher": f"DDIM {teacher_steps} steps, CFG {scale}",
               "latent_rmse_to_teacher": float(np.sqrt(np.mean((student - reference) ** 2))),
               "latent_std": float(student.std()), "teacher_latent_std": float(reference.std()),
               "latent_mean": float(student.mean()), "teacher_latent_mean": float(reference.mean())}
        if self.judge is not None:
            from jaxdistill.world import metrics, scene

            prompts = [self.prompts[i % len(self.prompts)] for i in range(num)]
            real = scene.scenes_for_prompts(seed, prompts)
            for name, latents in (("student", student), ("teacher", reference)):
                images = np.asarray(self.decode(latents))
                out.update({f"{name}_{k}": v for k, v in metrics.world_metrics(self.judge, images, prompts, real).items()})
        return out


def build_teacher(teacher: ml_collections.ConfigDict, abstract: bool = False):
    """The mixture a `teacher` section describes (kind 'mixture'); SD folders go through `build_run`."""
    if teacher.kind == "mixture":
        return ring_mixture(num_modes=teacher.num_modes, radius=teacher.radius, std=teacher.std,
                            num_classes=teacher.get("num_classes", 1))
    if teacher.kind == "diffusers":
        path = teacher.get("path", "")
        if abstract and not path and teacher.get("architecture"):
            return None
        if not path or not os.path.isdir(path):
            raise RunError(
                f"teacher.path={path!r} is not a folder. Stable Diffusion recipes read a diffusers-format folder "
                "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/): download it where there "
                "is network (e.g. `huggingface-cli download <repo> --local-dir /models/sd15`) and pass "
                "--config.teacher.path=/models/sd15."
            )
        return None
    raise RunError(f"teacher.kind={teacher.kind!r} is unknown; expected 'mixture' or 'diffusers'.")


def _mesh(config, devices=None):
    """The config's mesh over `devices` (default: every device of the run, all processes), which
    must hold exactly its devices when several processes or a given device set are involved."""
    shape = tuple(config.mesh.shape)
    exact = devices is not None or jax.process_count() > 1
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if math.prod(shape) > n or (exact and math.prod(shape) != n):
        where = f" over {jax.process_count()} processes" if jax.process_count() > 1 else ""
        raise RunError(f"mesh.shape={shape} needs {math.prod(shape)} devices; {n} are there{where}. Set "
                       f"--config.mesh.shape to a shape whose product is {'exactly' if exact else 'at most'} {n}; "
                       f"the nearest are {shd.mesh_suggestions(n, shape)}.")
    try:
        mesh = shd.make_mesh(shape, devices[: math.prod(shape)])
    except ValueError as e:
        raise RunError(f"mesh.shape: {e}") from e
    try:
        shd.check_batch(config.train.batch_size, mesh, config.train.microbatches)
    except ValueError as e:
        raise RunError(f"train.{e}") from e
    return mesh


def build_run(config: ml_collections.ConfigDict, *, devices=None, abstract: bool = False,
              num_prompts: int = 1024) -> Run:
    """The teacher, mesh and `Distiller` (fresh state) a config describes, on `devices` (default:
    all of the run's devices). `abstract=True` builds shapes only, to compile the step and read
    its costs (`jaxdistill info`): SD teachers from their config files or
    `teacher.architecture`, with a prompt bank of the prompt file's length (else `num_prompts`)."""
    teacher = build_teacher(config.teacher, abstract)
    mesh = _mesh(config, devices)
    t = config.train
    if config.teacher.kind == "diffusers":
        return _build_sd_run(config, mesh, abstract, num_prompts)
    d = toy_distiller(teacher, build_spec(config), batch_size=t.batch_size, microbatches=t.microbatches,
                      hidden=config.model.hidden, depth=config.model.depth, seed=t.seed, mesh=mesh, abstract=abstract)
    return MixtureRun(config, teacher, d)


def _require_init_from_teacher(config: ml_collections.ConfigDict) -> None:
    if not config.model.init_from_teacher:
        raise RunError("model.init_from_teacher=False is not supported: SD generators and critics start from the "
                       "teacher's UNet (SiD, DMD2); set it to True.")


def _build_sd_run(config: ml_collections.ConfigDict, mesh, abstract: bool = False, num_prompts: int = 1024) -> SDRun:
    from jaxdistill.models.weights import WeightsError
    from jaxdistill.teachers.stable_diffusion import (StableDiffusion, abstract_prompt_bank, read_prompts,
                                                      sharded_prompt_bank)

    _require_init_from_teacher(config)  # before loading: an SD teacher can take minutes to load
    tc, m = config.teacher, config.model
    kw = dict(dtype=jnp.dtype(m.compute_dtype), param_dtype=jnp.dtype(m.param_dtype), attention_impl=m.attention,
              remat=m.remat, scan_layers=m.scan_layers)
    architecture = "" if tc.path else tc.get("architecture", "")
    try:
        if abstract:  # shapes only: config files or a published architecture, no weights, no text encoding
            sd = StableDiffusion.abstract(tc.path, architecture=architecture, **kw)
            prompts = (read_prompts(tc.prompts) if tc.prompts else []) or [""] * num_prompts
            bank = abstract_prompt_bank(sd, len(prompts), kw["dtype"], mesh.shape["data"] * mesh.shape["fsdp"])
        else:
            prompts = read_prompts(tc.prompts)
            sd = StableDiffusion.from_pretrained(tc.path, variant=tc.variant or None, **kw)
            bank = sharded_prompt_bank(sd, prompts, tc.resolution, mesh, shd.BATCH_AXES)
        sd.latent_shape(tc.resolution)  # a resolution the VAE and UNet cannot take fails here, as a RunError
    except (WeightsError, FileNotFoundError, ValueError) as e:
        where = f"teacher.path={tc.path!r}" if tc.path or not abstract else f"teacher.architecture={architecture!r}"
        raise RunError(f"cannot {'read the shapes of' if abstract else 'load'} the teacher in {where}: {e}") from e
    return sd_run(config, mesh, sd, prompts, bank, abstract=abstract)


def sd_run(config: ml_collections.ConfigDict, mesh, sd, prompts: list, bank: dict, *,
           abstract: bool = False) -> SDRun:
    """The run of `config` on a teacher already in hand: `sd` a `StableDiffusion` (loaded,
    abstract, or `StableDiffusion.random` for benchmarks) and `bank` its prompt bank for
    `prompts` (rows over the mesh's batch axes, as `sharded_prompt_bank` places them)."""
    from flax import nnx

    from jaxdistill.models import DiscriminatorHead
    from jaxdistill.models.layers import abstract_module
    from jaxdistill.models.weights import WeightsError
    from jaxdistill.teachers.stable_diffusion import UNetDenoiser, sd_problem

    _require_init_from_teacher(config)
    tc, spec = config.teacher, build_spec(config)
    _require_ladder_in_range(spec.sigma_ladder, sd.schedule.sigma_max)
    unet_def, unet_params = nnx.split(sd.unet, nnx.Param)
    teacher = {"unet": nnx.to_pure_dict(unet_params), "prompts": bank}

    # Own copies of the teacher's weights: the train step donates the state, never the teacher.
    def copy_of_teacher():
        if abstract:
            return UNetDenoiser(sd.unet, sd.schedule)
        graphdef, state = nnx.split(sd.unet)
        return UNetDenoiser(nnx.merge(graphdef, jax.tree.map(jnp.copy, state)), sd.schedule)

    head = None
    if spec.discriminator:
        channels = sd.unet.config["block_out_channels"][-1]
        build_head = lambda rngs: DiscriminatorHead(channels, channels, rngs=rngs)  # noqa: E731
        head = abstract_module(build_head) if abstract else build_head(nnx.Rngs(config.train.seed + 2))
    d = Distiller(spec, sd_problem(sd, unet_def, tc.resolution, len(prompts)), copy_of_teacher(), copy_of_teacher(),
                  head, batch_size=config.train.batch_size, microbatches=config.train.microbatches, mesh=mesh,
                  seed=config.train.seed, abstract=abstract,
                  teacher_specs=_teacher_specs(sd.unet, teacher, mesh))
    judge = None
    if tc.get("judge") and not abstract:
        from jaxdistill.world import judge as judge_lib

        try:
            judge = judge_lib.load(tc.judge)
        except (WeightsError, FileNotFoundError) as e:
            raise RunError(f"cannot load the judge in teacher.judge={tc.judge!r}: {e}") from e
    return SDRun(config, teacher, d, sd, prompts, judge)


def _require_ladder_in_range(ladder: tuple, sigma_max: float) -> None:
    """A VP teacher has a largest σ (its schedule's last timestep, pure noise for it). Above it the
    network sees its last timestep while x̂₀ = x − σ·ε̂ uses the larger σ, multiplying its ε error
    by σ/σ_max: the registry's EDM and flow ladders (DMD2's and ml-sid-dit's σ = 80) are wrong for
    it, so they are refused rather than clipped."""
    if max(ladder) > sigma_max * (1 + 1e-4):
        fitted = tuple(round(s, 4) for s in ladder_within(ladder, sigma_max))
        raise RunError(f"method.sigma_ladder={tuple(ladder)} goes above this teacher's largest σ {sigma_max:.4f} "
                       "(its schedule's last timestep; above it x̂₀ = x − σ·ε̂ multiplies the teacher's error by "
                       f"σ/σ_max). Start at most at σ_max, e.g. --config.method.sigma_ladder='{fitted}'.")


def _teacher_specs(unet, teacher: dict, mesh) -> dict:
    """The SD teacher's UNet sharded by the parameter rules (like the generator and critic), its
    prompt bank's rows over the batch axes (`sharded_prompt_bank`), the null prompt replicated."""
    from jax.sharding import PartitionSpec as P

    bank = teacher["prompts"]
    specs = {"unet": shd.param_specs(unet), "prompts": {"cond": jax.tree.map(lambda _: P(shd.BATCH_AXES), bank["cond"]),
                                                       "null": jax.tree.map(lambda _: P(), bank["null"])}}
    shd.check_divisible(teacher["unet"], specs["unet"], mesh)
    return specs


def _check_compatible(saved: dict, config: dict, workdir: str) -> None:
    for section in STATE_DEFINING:
        if saved.get(section) != config.get(section):
            raise RunError(
                f"{workdir} holds a run with a different `{section}` section ({saved.get(section)} vs "
                f"{config.get(section)}), so its checkpoints cannot be resumed by this config. Use a new "
                "--workdir, or the config that run was started with."
            )


def restore(run: Run, ckpt: Checkpointer, step: int | None = None) -> int:
    """Restore the run's state from `step` (default latest); unreadable checkpoints raise a
    RunError that names the step folder and the way out. Nothing on disk is changed."""
    step = ckpt.latest_step() if step is None else step
    try:
        _check_compatible(ckpt.restore_config(step), run.resolved, os.path.dirname(ckpt.directory))
        run.distiller.restore(ckpt, step)
    except RunError:
        raise
    except Exception as e:  # orbax raises many kinds (ValueError, OSError, tensorstore errors, ...)
        older = [s for s in ckpt.all_steps() if s < step]
        way_out = (f"move {os.path.join(ckpt.directory, str(step))} aside to resume from step {older[-1]}"
                   if older else "start again in a new --workdir")
        raise RunError(f"checkpoint step {step} in {ckpt.directory} cannot be read ({type(e).__name__}: "
                       f"{(str(e).splitlines() or [''])[0][:200]}); it may be corrupted or incomplete. To go on, {way_out}. "
                       "Nothing was changed on disk.") from e
    return step


def open_run(workdir: str, step: int | None = None) -> Run:
    """The run in `workdir` (its config.json) with the state of checkpoint `step` (default latest)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise RunError(f"{workdir} is not a run directory: it has no config.json. Point --workdir at a folder "
                       "written by `jaxdistill train`.")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if "microbatches" not in config.train:  # written before gradient accumulation: one microbatch is what it ran
        config.train.microbatches = 1
    run = build_run(config)
    with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
        if ckpt.latest_step() is None:
            raise RunError(f"{workdir} has no complete checkpoint yet; train longer or check --workdir.")
        if step is not None and step not in ckpt.all_steps():
            raise RunError(f"{workdir} has no checkpoint at step {step}; it has steps {ckpt.all_steps()}.")
        restore(run, ckpt, step)
    return run


class _StopFlag:
    """SIGTERM / SIGINT, acted on at a step boundary. One process: its own handlers. Several
    processes must stop at the same step, so JAX's preemption service (started by
    `jax.distributed.initialize`) catches SIGTERM in any process and
    `reached_preemption_sync_point` turns true at one agreed step in all of them; SIGINT is
    forwarded to it as SIGTERM."""

    def __init__(self):
        self.signal = None
        self.multi_process = jax.process_count() > 1

    def install(self) -> dict:
        """Install the handlers; returns the previous ones."""
        if self.multi_process:
            return {signal.SIGINT: signal.signal(signal.SIGINT, lambda *_: os.kill(os.getpid(), signal.SIGTERM))}
        return {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}

    def __call__(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def check(self, step: int) -> bool:
        """Whether to stop after `step` (call once per step, with increasing steps, in every process)."""
        if self.multi_process and self.signal is None:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signal = "SIGTERM"
        return self.signal is not None


def train(config: ml_collections.ConfigDict, workdir: str, *, print_fn=print) -> dict:
    """Run (or resume) the distillation described by `config` in `workdir`; returns the final
    evaluation of the EMA generator on `train.eval_samples` samples (none when 0)."""
    run = build_run(config)
    d, t = run.distiller, config.train
    primary = jax.process_index() == 0  # the one process that prints and writes files (the checkpoint is everyone's)
    print_fn = print_fn if primary else (lambda *_: None)
    os.makedirs(workdir, exist_ok=True)
    with Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.keep,
                      keep_period=t.get("keep_period") or None) as ckpt:
        if ckpt.latest_step() is not None:
            restore(run, ckpt)
            print_fn(f"resumed from step {int(d.state.step)} in {ckpt.directory}")
        if primary:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                json.dump(run.resolved, f, indent=2)
        step_fn = d.compile(run.teacher, dict(t.get("compiler_options") or {}))
        print_fn(f"compiled the train step in {d.compile_seconds:.1f} s; method {d.spec.name}, "
                 f"mesh {tuple(config.mesh.shape)}")
        stop = _StopFlag()
        previous = stop.install()
        try:
            with MetricWriter(workdir) as writer:
                writer.scalars(int(d.state.step), {"time/compile_s": d.compile_seconds})
                _Loop(run, step_fn, ckpt, writer, stop, print_fn).go()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if stop.signal is None and ckpt.latest_step() != int(d.state.step):
            d.save(ckpt, run.resolved, force=True)
    if not t.eval_samples:
        print_fn("no end-of-train evaluation (train.eval_samples=0)")
        return {}
    summary = run.evaluate(t.eval_samples, seed=t.seed + 1)
    print_fn("final: " + json.dumps(summary))
    return summary


class _Loop:
    """The step loop with its host bookkeeping one step behind the device (see module docstring)."""

    def __init__(self, run: Run, step_fn, ckpt: Checkpointer, writer: MetricWriter, stop: _StopFlag, print_fn):
        self.job, self.step_fn, self.ckpt, self.writer, self.stop, self.print = run, step_fn, ckpt, writer, stop, print_fn
        self.t = run.config.train
        self.nonfinite = 0
        self.last_time, self.last_step = time.perf_counter(), int(run.distiller.state.step)

    def go(self) -> None:
        d, t = self.job.distiller, self.t
        teacher = jax.device_put(self.job.teacher, d.teacher_sharding(self.job.teacher))
        pending = None
        for step in range(int(d.state.step), t.steps):
            d.state, metrics = self.step_fn(d.state, teacher)
            done = step + 1
            if pending is not None:
                self._account(*pending)
            pending = (done, metrics)
            checkpoint = done % t.checkpoint_every == 0
            picture = t.sample_every and done % t.sample_every == 0
            stopping = self.stop.check(done)
            if checkpoint or picture or stopping or done == t.steps:
                self._account(*pending)
                pending = None
                if picture:
                    self.writer.image(done, "samples", self.job.picture(range(t.sample_count))[1])
                if checkpoint and self.nonfinite == 0:
                    d.save(self.ckpt, self.job.resolved)
                # Pictures and saves are not step time: restart the clock after them.
                self.last_time, self.last_step = time.perf_counter(), done
                if self.stop.signal is not None:
                    if self.ckpt.latest_step() != done and self.nonfinite == 0:
                        d.save(self.ckpt, self.job.resolved, force=True)
                    self.ckpt.wait()
                    self.print(f"{self.stop.signal}: saved step {self.ckpt.latest_step()} to {self.ckpt.directory}; "
                               "resume with the same command")
                    return

    def _account(self, done: int, metrics: dict) -> None:
        """Read step `done`'s metrics: non-finite check, then the log row every `log_every` steps."""
        t = self.t
        losses = {k: float(v) for k, v in jax.device_get({k: metrics[k] for k in ("gen_loss", "critic_loss")}).items()}
        self.nonfinite = 0 if all(math.isfinite(v) for v in losses.values()) else self.nonfinite + 1
        if self.nonfinite >= t.max_nonfinite_steps:
            raise RunError(
                f"losses were non-finite for {self.nonfinite} consecutive steps, the last at step {done} "
                f"({losses}); stopped without saving. The last good checkpoint (step {self.ckpt.latest_step()}) "
                "is kept; lower the learning rates and resume."
            )
        if done % t.log_every and done != t.steps:
            return
        now = time.perf_counter()
        seconds_per_step = (now - self.last_time) / max(done - self.last_step, 1)
        rate = t.batch_size / max(seconds_per_step, 1e-9)
        values = {"samples_per_s": rate, "time/step_ms": 1e3 * seconds_per_step,
                  **{k: float(v) for k, v in jax.device_get(metrics).items()}}
        self.writer.scalars(done, values)
        eta = (t.steps - done) * seconds_per_step
        self.print(f"step {done}/{t.steps}  {rate:,.0f} samples/s  {1e3 * seconds_per_step:.1f} ms/step  "
                   f"ETA {eta:.0f} s  gen_loss {values['gen_loss']:.4g}  critic_loss {values['critic_loss']:.4g}")
        self.last_time, self.last_step = now, done
