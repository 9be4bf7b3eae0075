"""Train-step speed and memory: jaxdistill's compiled step against the PyTorch reference a user
would pick, same method, shapes and device, measured side by side in one run (issue 7).

    python experiments/bench_step.py --model sd15 --method sid_lsg --batches 16,24,32     # one H100
    python experiments/bench_step.py --model sd15 --method dmd2 --batches 16
    python experiments/bench_step.py --model sdxl --method sid --resolution 1024 --batches 1,2,4 \
        --param_dtype bfloat16 --torch_checkpointing
    python experiments/bench_step.py --model tiny --batches 2 --iters 2 --warmup 1     # CPU smoke, ~2 min

The reference is diffusers' `UNet2DConditionModel` of the same config with random weights:
bfloat16 parameters and AdamW states (β1 from the method), PyTorch SDPA attention, once eager
and once with `torch.compile` on each UNet. Its iteration does what ours does for the method:
SiD / SiD-LSG / few-step SiD train the critic first (a no-grad generator pass, then the critic's
denoising loss under its training CFG, backward, step), then the generator (its forward with
grad; the teacher and the critic at the re-noised sample under their CFG scales, each CFG pair
as one batched call; the SiD loss back-propagates through both denoisers into x_g); DMD2 runs
the generator first with both denoisers under no-grad, then `n_critic` critic updates. Both
keep an EMA of the generator. Few-step SiD (K=4) draws k ~ U{1..K} per iteration and runs k−1
no-grad generator passes before the one with grad, in both. Text features are random
(`random_prompt_bank`), as are the weights (`StableDiffusion.random`): speed and memory do not
depend on their values.

Each measurement runs in its own process (clean device memory and peak counters); the parent
prints each row as it is measured: ms/step, generator images/s, the run's time over ours, model
FLOPs utilisation (model FLOPs per step from the lowered program with XLA attention and no
remat, `jaxdistill.train.costs.program_flops`, counted on the host's CPU beside the GPU runs;
peak from the device's dense bf16 rate), peak device memory and compile time. A batch that does
not fit is reported as out of memory; a run past `--timeout` with the phases it reached.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# Dense bfloat16 peak FLOP/s by device kind (NVIDIA data sheets, without sparsity).
PEAK_BF16 = {"H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H200": 989e12, "A100": 312e12, "GH200": 989e12}
GUIDANCE = {"sid_lsg": ("sid_lsg", 4.5), "sid_fewstep": ("sid_lsg", 4.5), "sid": ("none", 1.0),
            "dmd2": ("dmd2", 1.75)}
# Methods whose registry ladder starts at σ = 80 (EDM's and ml-sid-dit's) run within SD's σ range
# (its scaled-linear table ends at σ 14.6146, SD1.5, SD2.1 and SDXL alike): DMD2 from t = 999.
CAPPED_LADDERS = ("dmd2", "sid_fewstep")
# A CPU-sized SD1.5-shaped UNet for the smoke run (`--model tiny`).
TINY_UNET = {"block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 4,
             "cross_attention_dim": 768, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "in_channels": 4, "out_channels": 4,
             "sample_size": 8}
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "OutOfMemoryError")


def unet_config(model: str) -> dict:
    from jaxdistill.models.architectures import architecture

    return dict(TINY_UNET) if model == "tiny" else dict(architecture(model)[0])


def method_spec(args):
    from jaxdistill.recipes import build_spec, sd_config

    preset, kappa = GUIDANCE[args.method]
    from jaxdistill.diffusion.schedules import stable_diffusion_schedule
    from jaxdistill.methods import get_method, ladder_within

    ladder = ({"sigma_ladder": ladder_within(get_method(args.method).sigma_ladder,
                                             stable_diffusion_schedule().sigma_max)}
              if args.method in CAPPED_LADDERS else {})
    config = sd_config(args.method, "", resolution=args.resolution, guidance=preset, kappa=kappa,
                       optim=dict(gen_lr=1e-6, critic_lr=1e-6), batch_size=args.batch, steps=1, **ladder)
    return config, build_spec(config)


# ---------------------------------------------------------------------------------------- JAX


def jax_run(args, abstract: bool = False):
    """The `SDRun` of our step for `args` on one device: random weights, or shapes only."""
    import jax
    import jax.numpy as jnp

    from jaxdistill.teachers.stable_diffusion import StableDiffusion, abstract_prompt_bank, random_prompt_bank
    from jaxdistill.train import sharding as shd
    from jaxdistill.train.program import sd_run

    config, _ = method_spec(args)
    config.model.update(compute_dtype=args.compute_dtype, param_dtype=args.param_dtype, attention=args.attention,
                        remat=args.remat)
    kw = dict(dtype=jnp.dtype(args.compute_dtype), param_dtype=jnp.dtype(args.param_dtype),
              attention_impl=args.attention, remat=args.remat)
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    shapes_only = abstract and args.model != "tiny"  # the tiny UNet is no published architecture: built, it is small
    if shapes_only:
        sd = StableDiffusion.abstract(architecture=args.model, **kw)
        bank = abstract_prompt_bank(sd, args.prompts, kw["dtype"])
    else:
        sd = StableDiffusion.random(unet_config(args.model) if args.model == "tiny" else args.model, **kw)
        bank = random_prompt_bank(sd, args.prompts, args.resolution, kw["dtype"])
    return sd_run(config, mesh, sd, [""] * args.prompts, bank, abstract=shapes_only)


def flops_worker(args) -> dict:
    """Model FLOPs per step: the step as JAX writes it, with XLA attention and no
    rematerialisation (`costs.program_flops`), lowered on the host's CPU, never compiled; the same
    for every run of a batch, whatever kernels and remat policy the run uses."""
    from jaxdistill.train import costs

    args.attention, args.remat = "xla", "none"
    run = jax_run(args, abstract=True)
    return {"model_flops": costs.program_flops(run.distiller.lower(run.teacher))}


def phase(what: str, since: float) -> None:
    """A progress line on stderr (the parent shows the last ones when a run times out)."""
    print(f"{time.perf_counter() - since:7.1f} s  {what}", file=sys.stderr, flush=True)


def jax_worker(args) -> dict:
    import jax

    start = time.perf_counter()
    run = jax_run(args)
    d = run.distiller
    phase("random weights and state built", start)
    built = time.perf_counter()
    lowered = d.lower(run.teacher)
    phase("step traced and lowered", start)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - built  # tracing, lowering and XLA's compilation
    phase("step compiled", start)
    teacher = jax.device_put(run.teacher, d.teacher_sharding(run.teacher))
    state = d.state
    for i in range(args.warmup):  # each logged: a run stopped at --timeout still shows a step's time
        state, _ = compiled(state, teacher)
        jax.block_until_ready(state)
        phase(f"warm-up step {i + 1} done", start)
    start = time.perf_counter()
    for _ in range(args.iters):
        state, metrics = compiled(state, teacher)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / args.iters
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    result = {"seconds": seconds, "compile_s": compile_s, "peak_bytes": stats.get("peak_bytes_in_use"),
              "device": device.device_kind, "gen_loss": float(metrics["gen_loss"])}
    if args.profile:
        import tempfile

        with tempfile.TemporaryDirectory() as trace:
            jax.profiler.start_trace(trace)
            for _ in range(PROFILED_STEPS):
                state, metrics = compiled(state, teacher)
            jax.block_until_ready((state, metrics))
            jax.profiler.stop_trace()
            result["profile"] = device_time_by_kernel(trace, PROFILED_STEPS)
    return result


PROFILED_STEPS = 2
# Kernel families, by the first pattern a device kernel's name matches (cuDNN's convolution
# kernels are implicit GEMMs, so convolutions are tried before matmuls).
KERNEL_FAMILIES = (("attention", r"fmha|flash|sdpa|attention"),
                   ("convolution", r"conv|fprop|dgrad|wgrad|implicit"),
                   ("matmul", r"gemm|matmul|nvjet|cutlass|xmma|cublas|dot"),
                   ("reduction", r"reduce|norm"),
                   ("copy/transpose", r"copy|transpose|memcpy|memset"),
                   ("other XLA fusions", r"fusion"))


def device_time_by_kernel(trace_dir: str, steps: int) -> dict:
    """Device time per step from a `jax.profiler` trace: every kernel on the GPU's streams, summed
    by name (the top 15) and by `KERNEL_FAMILIES`."""
    import glob
    import re

    from jax.profiler import ProfileData

    by_name, lines = {}, set()
    for path in glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True):
        for plane in ProfileData.from_file(path).planes:
            if not plane.name.startswith("/device:"):
                continue
            for line in plane.lines:
                if not line.name.startswith("Stream"):
                    continue
                lines.add(line.name)
                for ev in line.events:
                    by_name[ev.name] = by_name.get(ev.name, 0.0) + ev.duration_ns / 1e6 / steps
    families = {}
    for name, ms in by_name.items():
        family = next((f for f, pattern in KERNEL_FAMILIES if re.search(pattern, name, re.I)), "other")
        families[family] = families.get(family, 0.0) + ms
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:15]
    return {"busy_ms": sum(by_name.values()), "families_ms": families, "top_ms": top, "streams": sorted(lines)}


# ------------------------------------------------------------------------------------ PyTorch


def torch_worker(args, compiled: bool) -> dict:
    import copy

    import numpy as np
    import torch
    from diffusers import UNet2DConditionModel

    from jaxdistill.diffusion.schedules import stable_diffusion_schedule

    _, spec = method_spec(args)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cfg = unet_config(args.model)
    teacher = UNet2DConditionModel(**cfg).to(dev, torch.bfloat16).eval().requires_grad_(False)
    gen, critic = copy.deepcopy(teacher).train(), copy.deepcopy(teacher).train()
    if args.torch_checkpointing:
        gen.enable_gradient_checkpointing()
        critic.enable_gradient_checkpointing()
    ema = [p.detach().clone() for p in gen.parameters()]
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-6, betas=(spec.adam_b1, spec.adam_b2),
                                 weight_decay=spec.weight_decay) for n, m in (("gen", gen), ("critic", critic))}
    for m in (gen, critic):
        m.requires_grad_(True)
    nets = {"teacher": teacher, "gen": gen, "critic": critic}
    if compiled:
        nets = {n: torch.compile(m) for n, m in nets.items()}

    b, latent = args.batch, args.resolution // 8
    ac = torch.tensor(np.asarray(stable_diffusion_schedule().alphas_cumprod), device=dev, dtype=torch.float32)
    ctx_dim, sdxl = cfg["cross_attention_dim"], cfg.get("addition_embed_type") == "text_time"
    bank = torch.randn(args.prompts, 77, ctx_dim, device=dev, dtype=torch.bfloat16)
    null = torch.zeros(1, 77, ctx_dim, device=dev, dtype=torch.bfloat16)
    pooled = cfg.get("projection_class_embeddings_input_dim", 0) - 6 * cfg.get("addition_time_embed_dim", 0)
    g = spec.guidance
    gen_ladder = [999] if spec.num_steps == 1 else [int(999 * (1 - i / spec.num_steps)) for i in range(spec.num_steps)]

    def added(n):
        if not sdxl:
            return {}
        res = args.resolution
        return {"added_cond_kwargs": {
            "text_embeds": torch.randn(n, pooled, device=dev, dtype=torch.bfloat16),
            "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * n, device=dev, dtype=torch.bfloat16)}}

    def x0(net, x_t, t, ctx):  # one UNet call: ε -> x̂_0
        a = ac[t].view(-1, 1, 1, 1).to(x_t.dtype)
        eps = nets[net](x_t, t, ctx, **added(x_t.shape[0])).sample
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def guided(net, x_t, t, cond, scale):
        if scale == 1.0:
            return x0(net, x_t, t, cond)
        if scale == 0.0:
            return x0(net, x_t, t, null.expand_as(cond))
        both = x0(net, torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, null.expand_as(cond)]))
        f_cond, f_uncond = both.chunk(2)
        return f_uncond + scale * (f_cond - f_uncond)

    def noised(x, t):
        a = ac[t].view(-1, 1, 1, 1).to(x.dtype)
        return a.sqrt() * x + (1 - a).sqrt() * torch.randn_like(x)

    def generate(cond, k, grad: bool):
        z = torch.randn(b, 4, latent, latent, device=dev, dtype=torch.bfloat16)
        x = z
        for i in range(k):
            t = torch.full((b,), gen_ladder[i], device=dev)
            last = i == k - 1
            with torch.set_grad_enabled(grad and last):
                out = x0("gen", x if i == 0 else noised(x, t), t, cond)
            x = out if last else out.detach()
        return x

    def conditions():
        return bank[torch.randint(0, args.prompts, (b,), device=dev)]

    def critic_update(x_g, cond):
        t = torch.randint(20, 980, (b,), device=dev)
        f = guided("critic", noised(x_g, t), t, cond, g.cfg_fake_train)
        ((f.float() - x_g.float()) ** 2).mean().backward()
        opts["critic"].step()
        opts["critic"].zero_grad(set_to_none=True)

    def gen_update(k):
        cond = conditions()
        critic.requires_grad_(False)
        x_g = generate(cond, k, grad=True)
        t = torch.randint(20, 980, (b,), device=dev)
        if spec.kernel == "sid":  # gradients through both denoisers into x_g
            x_t = noised(x_g, t)
            real, fake = guided("teacher", x_t, t, cond, g.cfg_teacher), guided("critic", x_t, t, cond, g.cfg_fake_eval)
            delta = (real - fake).float()
            scale = 1.0 / (x_g.float() - real.float()).abs().mean((1, 2, 3)).clamp_min(1e-5).detach()
            alpha = spec.kernel_kwargs.get("alpha", 1.0)
            loss = ((delta * ((real.float() - x_g.float()) - alpha * delta)).sum((1, 2, 3)) * scale).mean()
        else:  # DMD: both denoisers under no-grad
            with torch.no_grad():
                x_t = noised(x_g.detach(), t)
                real = guided("teacher", x_t, t, cond, g.cfg_teacher)
                fake = guided("critic", x_t, t, cond, g.cfg_fake_eval)
                w = (x_g.float() - real.float()).abs().mean((1, 2, 3), keepdim=True).clamp_min(1e-5)
                target = x_g.float() - (fake.float() - real.float()) / w
            loss = 0.5 * ((x_g.float() - target) ** 2).sum((1, 2, 3)).mean()
        loss.backward()
        critic.requires_grad_(True)
        opts["gen"].step()
        opts["gen"].zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in gen.parameters()], 1 - spec.ema_decay)
        return x_g.detach(), cond

    def iteration():
        k = int(torch.randint(1, spec.num_steps + 1, ()))
        if spec.order == "critic_first":
            for _ in range(spec.n_critic):
                cond = conditions()
                with torch.no_grad():
                    x_g = generate(cond, k, grad=False)
                critic_update(x_g, cond)
            gen_update(k)
        else:
            x_g, cond = gen_update(k)
            critic_update(x_g, cond)
            for _ in range(spec.n_critic - 1):
                cond = conditions()
                with torch.no_grad():
                    x_g = generate(cond, k, grad=False)
                critic_update(x_g, cond)

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    start = time.perf_counter()
    iteration()  # the first: compilation (torch.compile), allocator warm-up
    sync()
    first = time.perf_counter() - start
    for _ in range(args.warmup - 1):
        iteration()
    sync()
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.iters):
        iteration()
    sync()
    seconds = (time.perf_counter() - start) / args.iters
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else None
    return {"seconds": seconds, "compile_s": first - seconds, "peak_bytes": peak,
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}


# ------------------------------------------------------------------------------------- parent


WORKER_ARGS = ("compute_dtype", "param_dtype", "attention", "remat", "torch_checkpointing")


def parse_run(text: str) -> tuple[str, dict]:
    """`jax`, `torch_eager`, `torch_compile`, each optionally with overrides of the worker's
    options: `jax@remat=none@attention=xla`."""
    kind, *sets = text.split("@")
    if kind not in ("jax", "torch_eager", "torch_compile"):
        raise SystemExit(f"--runs: unknown run {kind!r} in {text!r}; runs are jax, torch_eager, torch_compile.")
    overrides = dict(x.split("=", 1) for x in sets if "=" in x)
    bad = [x for x in sets if "=" not in x] + [k for k in overrides if k not in WORKER_ARGS]
    if bad:
        raise SystemExit(f"--runs: cannot read {bad} in {text!r}; an override is @key=value with key in {WORKER_ARGS}.")
    return kind, overrides


def worker_command(kind: str, args, batch: int, overrides: dict) -> list:
    passed = {k: v for k, v in vars(args).items() if k not in ("worker", "batch", "batches", "out", "runs")}
    passed.update({k: (v.lower() in ("1", "true", "yes")) if k == "torch_checkpointing" else v
                   for k, v in overrides.items()})
    return [sys.executable, os.path.abspath(__file__), "--worker", kind, "--batch", str(batch)] + [
        f"--{k}" if v is True else f"--{k}={v}" for k, v in passed.items() if v is not False and v is not None]


def result_of(proc: subprocess.CompletedProcess, what: str) -> dict:
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1][len("RESULT "):])
    if any(m in proc.stderr for m in OOM_MARKERS):
        return {"oom": True}
    raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def measure(kind: str, args, batch: int, overrides: dict) -> dict:
    """One measurement in a fresh process; {"oom": True} when the batch does not fit,
    {"timeout": True} when it ran past --timeout seconds."""
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # JAX takes 75% of the GPU by default
    try:
        proc = subprocess.run(worker_command(kind, args, batch, overrides), capture_output=True, text=True, env=env,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return {"timeout": True, "last_lines": err.strip().splitlines()[-3:]}
    return result_of(proc, f"{kind} at batch {batch}")


def start_flops(args, batch: int) -> subprocess.Popen:
    """The model-FLOPs worker on the host's CPU, beside the GPU measurements."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(worker_command("flops", args, batch, {}), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def model_flops(proc: subprocess.Popen) -> float | None:
    out, err = proc.communicate()
    try:
        return result_of(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), "model FLOPs")["model_flops"]
    except (RuntimeError, KeyError) as e:
        print(f"no MFU: {e}", file=sys.stderr, flush=True)
        return None


HEADER = (f"{'batch':>5} {'run':<28} {'ms/step':>9} {'img/s':>8} {'ours ×':>7} {'MFU %':>6} {'peak GiB':>9} "
          f"{'compile s':>9}")


def row(batch: int, run: str, r: dict, ours: dict | None, flops: float | None) -> str:
    if r.get("oom") or r.get("timeout"):
        return (f"{batch:>5} {run:<28} {'out of memory' if r.get('oom') else 'past --timeout':>13}"
                + "".join(f"\n        {line}" for line in r.get("last_lines", [])))
    ratio = f"{r['seconds'] / ours['seconds']:.2f}" if ours and not run.startswith("jax") else "-"
    peak = PEAK_BF16.get(next((k for k in PEAK_BF16 if k in (r.get("device") or "")), ""), None)
    mfu = f"{100 * flops / r['seconds'] / peak:.1f}" if peak and flops else "-"
    mem = f"{r['peak_bytes'] / 2**30:.1f}" if r.get("peak_bytes") else "-"
    return (f"{batch:>5} {run:<28} {1e3 * r['seconds']:>9.1f} {batch / r['seconds']:>8.2f} {ratio:>7} {mfu:>6} "
            f"{mem:>9} {r['compile_s']:>9.1f}")


def profile_lines(batch: int, run: str, p: dict) -> list:
    out = [f"profile of {run} at batch {batch}: {p['busy_ms']:.1f} ms of kernels per step on {len(p['streams'])} "
           f"streams; by family: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(p["families_ms"].items(),
                                                                              key=lambda kv: -kv[1]))]
    out += [f"  {ms:9.2f} ms  {name[:110]}" for name, ms in p["top_ms"]]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="sd15", choices=["sd15", "sd21", "sdxl", "tiny"])
    p.add_argument("--method", default="sid_lsg", choices=sorted(GUIDANCE))
    p.add_argument("--resolution", type=int, default=None, help="pixels (default: 512 for SD1.5, 1024 for SDXL)")
    p.add_argument("--batches", default="16", help="comma-separated batch sizes")
    p.add_argument("--runs", default="jax,torch_eager,torch_compile",
                   help="comma-separated: jax, torch_eager, torch_compile, each with optional @key=value overrides")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--prompts", type=int, default=64, help="rows of the random prompt bank")
    p.add_argument("--compute_dtype", default="bfloat16")
    p.add_argument("--param_dtype", default="float32")
    p.add_argument("--attention", default="cudnn", choices=["xla", "cudnn", "splash"])
    p.add_argument("--remat", default="dots_saveable", choices=["none", "full", "dots_saveable"])
    p.add_argument("--torch_checkpointing", action="store_true", help="diffusers' gradient checkpointing")
    p.add_argument("--profile", action="store_true", help="our runs: also trace 2 steps, print device time by kernel")
    p.add_argument("--timeout", type=float, default=None, help="seconds one measurement may take")
    p.add_argument("--out", default="", help="also append each row as a JSON line here")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.resolution is None:
        args.resolution = {"sdxl": 1024, "sd21": 768, "tiny": 64}.get(args.model, 512)
    if args.warmup < 1 or args.iters < 1:
        p.error("--warmup and --iters must be >= 1.")
    if args.worker:
        workers = {"jax": jax_worker, "flops": flops_worker, "torch_eager": lambda a: torch_worker(a, False),
                   "torch_compile": lambda a: torch_worker(a, True)}
        print("RESULT " + json.dumps(workers[args.worker](args)), flush=True)
        return
    runs = [(text, *parse_run(text)) for text in args.runs.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    flops_procs = {b: start_flops(args, b) for b in batches}
    print(f"{args.model} {args.resolution}px, {args.method}; ours: compute {args.compute_dtype}, params "
          f"{args.param_dtype}, attention {args.attention}, remat {args.remat} (unless the run overrides); "
          f"{args.iters} timed iterations after {args.warmup}", flush=True)
    print(HEADER, flush=True)
    profiles = []
    for batch in batches:
        ours = None
        for i, (text, kind, overrides) in enumerate(runs):
            r = measure(kind, args, batch, overrides)
            if i == 0:  # the FLOPs worker ran beside the first measurement; read it once
                flops = model_flops(flops_procs[batch])
            if kind == "jax" and ours is None and "seconds" in r:
                ours = r
            print(row(batch, text, r, ours, flops), flush=True)
            if r.get("profile"):
                profiles += profile_lines(batch, text, r["profile"])
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({"batch": batch, "run": text, "model_flops": flops, **r}) + "\n")
    print("ours ×: this run's time per step over the first jax run's (> 1: ours is faster); img/s: generator images; "
          "MFU: model FLOPs (XLA attention, no remat) over the device's dense bf16 peak.")
    print("\n".join(profiles))


if __name__ == "__main__":
    main()
