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
prints one table: ms/step, generator images/s, ratio of ours to each reference, model FLOPs
utilisation (FLOPs per step from XLA's cost analysis of our compiled step, with every iteration of
its loops counted by `jaxdistill.train.costs.step_cost`; peak from the device's dense bf16
rate), peak device memory and compile time.
A batch that does not fit is reported as out of memory.
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


def jax_worker(args) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxdistill.teachers.stable_diffusion import StableDiffusion, random_prompt_bank
    from jaxdistill.train import costs
    from jaxdistill.train import sharding as shd
    from jaxdistill.train.program import sd_run

    config, spec = method_spec(args)
    config.model.update(compute_dtype=args.compute_dtype, param_dtype=args.param_dtype, attention=args.attention,
                        remat=args.remat)
    kw = dict(dtype=jnp.dtype(args.compute_dtype), param_dtype=jnp.dtype(args.param_dtype),
              attention_impl=args.attention, remat=args.remat)
    sd = StableDiffusion.random(unet_config(args.model) if args.model == "tiny" else args.model, **kw)
    bank = random_prompt_bank(sd, args.prompts, args.resolution, kw["dtype"])
    mesh = shd.make_mesh((1, 1, 1), jax.devices()[:1])
    run = sd_run(config, mesh, sd, [""] * args.prompts, bank)
    d = run.distiller
    compiled = d.compile(run.teacher)
    flops = costs.step_cost(compiled, 1).flops
    teacher = jax.device_put(run.teacher, d.teacher_sharding(run.teacher))
    state = d.state
    for _ in range(args.warmup):
        state, _ = compiled(state, teacher)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(args.iters):
        state, metrics = compiled(state, teacher)
    jax.block_until_ready((state, metrics))
    seconds = (time.perf_counter() - start) / args.iters
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    return {"seconds": seconds, "flops": flops, "compile_s": d.compile_seconds,
            "peak_bytes": stats.get("peak_bytes_in_use"), "device": device.device_kind,
            "gen_loss": float(metrics["gen_loss"])}


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


def measure(kind: str, args, batch: int) -> dict:
    """One measurement in a fresh process; {"oom": True} when the batch does not fit."""
    passed = {k: v for k, v in vars(args).items() if k not in ("worker", "batch", "batches", "out")}
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--batch", str(batch)] + [
        f"--{k}" if v is True else f"--{k}={v}" for k, v in passed.items() if v is not False]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1][len("RESULT "):])
    if any(m in proc.stderr for m in OOM_MARKERS):
        return {"oom": True}
    raise RuntimeError(f"{kind} at batch {batch} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def table(args, rows: list) -> str:
    out = [f"{args.model} {args.resolution}px, {args.method}; ours: compute {args.compute_dtype}, params "
           f"{args.param_dtype}, attention {args.attention}, remat {args.remat}; {args.iters} timed iterations "
           f"after {args.warmup}",
           f"{'batch':>5} {'run':<14} {'ms/step':>9} {'img/s':>8} {'ours ×':>7} {'MFU %':>6} {'peak GiB':>9} "
           f"{'compile s':>9}"]
    for batch, kind, r in rows:
        if r.get("oom"):
            out.append(f"{batch:>5} {kind:<14} {'out of memory':>9}")
            continue
        ours = next((x for bb, k, x in rows if bb == batch and k == "jax" and not x.get("oom")), None)
        ratio = f"{r['seconds'] / ours['seconds']:.2f}" if ours and kind != "jax" else "-"
        peak = PEAK_BF16.get(next((k for k in PEAK_BF16 if k in (r.get("device") or "")), ""), None)
        mfu = f"{100 * r['flops'] / r['seconds'] / peak:.1f}" if kind == "jax" and peak and r.get("flops") else "-"
        mem = f"{r['peak_bytes'] / 2**30:.1f}" if r.get("peak_bytes") else "-"
        out.append(f"{batch:>5} {kind:<14} {1e3 * r['seconds']:>9.1f} {batch / r['seconds']:>8.2f} {ratio:>7} "
                   f"{mfu:>6} {mem:>9} {r['compile_s']:>9.1f}")
    out.append("ours ×: the reference's time per step over ours (> 1: ours is faster). img/s: generator images.")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="sd15", choices=["sd15", "sd21", "sdxl", "tiny"])
    p.add_argument("--method", default="sid_lsg", choices=sorted(GUIDANCE))
    p.add_argument("--resolution", type=int, default=None, help="pixels (default: 512 for SD1.5, 1024 for SDXL)")
    p.add_argument("--batches", default="16", help="comma-separated batch sizes")
    p.add_argument("--runs", default="jax,torch_eager,torch_compile")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--prompts", type=int, default=64, help="rows of the random prompt bank")
    p.add_argument("--compute_dtype", default="bfloat16")
    p.add_argument("--param_dtype", default="float32")
    p.add_argument("--attention", default="cudnn", choices=["xla", "cudnn", "splash"])
    p.add_argument("--remat", default="dots_saveable", choices=["none", "full", "dots_saveable"])
    p.add_argument("--torch_checkpointing", action="store_true", help="diffusers' gradient checkpointing")
    p.add_argument("--out", default="", help="also write the rows as JSON here")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.resolution is None:
        args.resolution = {"sdxl": 1024, "sd21": 768, "tiny": 64}.get(args.model, 512)
    if args.warmup < 1 or args.iters < 1:
        p.error("--warmup and --iters must be >= 1.")
    if args.worker:
        result = jax_worker(args) if args.worker == "jax" else torch_worker(args, args.worker == "torch_compile")
        print("RESULT " + json.dumps(result), flush=True)
        return
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        for kind in args.runs.split(","):
            rows.append((batch, kind, measure(kind, args, batch)))
            print(f"measured {kind} at batch {batch}", file=sys.stderr, flush=True)
    print(table(args, rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump([{"batch": b, "run": k, **r} for b, k, r in rows], f, indent=2)


if __name__ == "__main__":
    main()
