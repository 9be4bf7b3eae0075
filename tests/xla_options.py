"""XLA's cheapest CPU compilation, for tests whose programs compile once and run a few times.

One compiled call of a tiny UNet costs about 1.4 s of CPU time with these options, against 2.2 s
at optimisation level 0 alone, 4.5 s at the default level, and 12.6 s of op-by-op compilation
for an eager NNX call (measured on tests/test_unet.py's sd15 and sdxl shapes). Numerics: the
tests that compare a program compiled this way compare it with one compiled the same way, or
with PyTorch within their tolerance.
"""

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                "xla_cpu_use_fusion_emitters": False, "xla_cpu_parallel_codegen_split_count": 1}
