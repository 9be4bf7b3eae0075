"""Planning a run without its weights or its hardware (`jaxdistill info [--topology]`): the
abstract build against the loaded one, the cost report, topology names, and the errors."""

import gzip
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdistill.commands.info import info
from jaxdistill.recipes import build_spec, mixture_config, sd_config
from jaxdistill.teachers import ring_mixture
from jaxdistill.teachers.stable_diffusion import StableDiffusion, abstract_prompt_bank, prompt_bank
from jaxdistill.toy import toy_distiller
from jaxdistill.train import costs
from jaxdistill.train import topology as tpu
from jaxdistill.train.program import RunError, _mesh
from jaxdistill.train.sharding import make_mesh
from jaxdistill.train.step import UPDATE_SCOPES

from sd_folder import make_tiny_sd
from xla_options import FAST_COMPILE


def _shapes(tree):
    return jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), tree)


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_the_abstract_teacher_has_the_loaded_teachers_shapes_from_config_files_alone(tmp_path, kind):
    folder = make_tiny_sd(str(tmp_path / kind), kind)
    sd = StableDiffusion.from_pretrained(folder)
    bank = prompt_bank(sd, ["a red circle", "", "a blue square"], 32)
    for path in tmp_path.rglob("*.safetensors"):  # planning reads config files only
        path.unlink()
    shutil.rmtree(os.path.join(folder, "tokenizer"))
    abstract = StableDiffusion.abstract(folder)
    assert _shapes(abstract_prompt_bank(abstract, 3)) == _shapes({"cond": bank["cond"], "null": prompt_bank(sd, [""], 32)["cond"]})
    assert _shapes(nnx.state(abstract.unet, nnx.Param)) == _shapes(nnx.state(sd.unet, nnx.Param))
    assert abstract.latent_shape(32) == sd.latent_shape(32) and abstract.is_sdxl == (kind == "sdxl")
    np.testing.assert_array_equal(abstract.schedule.sigmas, sd.schedule.sigmas)


def test_a_random_teacher_for_benchmarks_has_the_real_shapes(tmp_path):
    # SDXL: the richer conditioning (pooled text, time_ids); SD1.5's is its context alone.
    from jaxdistill.models.weights import read_config
    from jaxdistill.teachers.stable_diffusion import random_prompt_bank

    folder = make_tiny_sd(str(tmp_path / "sdxl"), "sdxl")
    sd = StableDiffusion.random(read_config(os.path.join(folder, "unet")), seed=3)
    abstract = StableDiffusion.abstract(folder)
    assert _shapes(nnx.state(sd.unet, nnx.Param)) == _shapes(nnx.state(abstract.unet, nnx.Param))
    bank = random_prompt_bank(sd, 5, 32)
    abstract.text_tokens = sd.text_tokens  # a config dict alone does not say the tokenizer's length: 77 as SD's
    assert _shapes(bank) == _shapes(abstract_prompt_bank(abstract, 5))
    assert float(jnp.abs(bank["null"]["context"]).max()) == 0.0 and float(bank["cond"]["context"].std()) > 0.5
    np.testing.assert_array_equal(bank["cond"]["time_ids"], [[32, 32, 0, 0, 32, 32]] * 5)


def test_published_architectures_need_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sd15").mkdir()  # a folder of that name in the working directory is not the architecture
    sd15, sdxl = StableDiffusion.abstract(architecture="sd15"), StableDiffusion.abstract(architecture="sdxl")
    count = lambda sd: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(sd.unet, nnx.Param)))  # noqa: E731
    assert (count(sd15), count(sdxl)) == (859_520_964, 2_567_463_684)
    assert _shapes(sd15.condition_shapes(5)) == {"context": ((5, 77, 768), jnp.dtype(jnp.float32))}
    assert {k: v.shape for k, v in sdxl.condition_shapes(2).items()} == {
        "context": (2, 77, 2048), "text_embeds": (2, 1280), "time_ids": (2, 6)}
    assert sd15.latent_shape(512) == (64, 64, 4) and sdxl.latent_shape(1024) == (128, 128, 4)
    assert StableDiffusion.abstract(architecture="sd21").schedule.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match=r"teacher.architecture='sd3' is not known; use one of \['sd15', 'sd21', 'sdxl'\]"):
        StableDiffusion.abstract(architecture="sd3")
    with pytest.raises(ValueError, match="not both"):
        StableDiffusion.abstract("sd15", architecture="sd15")
    with pytest.raises(FileNotFoundError, match="'sd15x' is not a folder"):
        StableDiffusion.abstract("sd15x")


def test_the_abstract_state_is_the_concrete_one_without_its_arrays():
    spec = build_spec(mixture_config("dmd2", "tiny"))
    mesh = make_mesh((4, 2, 1))
    kw = dict(batch_size=16, hidden=32, depth=2, seed=0, mesh=mesh)
    gm = ring_mixture(num_modes=4, radius=2.0, std=0.5)
    concrete, abstract = toy_distiller(gm, spec, **kw), toy_distiller(gm, spec, abstract=True, **kw)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract.state))
    assert _shapes(abstract.state) == _shapes(concrete.state)
    assert jax.tree.map(lambda x: x.sharding, abstract.state) == jax.tree.map(lambda x: x.sharding, concrete.state)


@pytest.mark.parametrize("name,shape,slice_name", [
    ("v5p:4x4x4", (4, 4, 4), "v5p-128"), ("v5p-64", (2, 4, 4), "v5p-64"), ("v5p-8", (2, 2, 1), "v5p-8"),
    ("v5e:16x16", (16, 16), "v5e-256"), ("v5e-256", (16, 16), "v5e-256"), ("v6e-256", (16, 16), "v6e-256"),
])
def test_topology_names(name, shape, slice_name):
    t = tpu.parse(name)
    assert (t.shape, t.slice_name) == (shape, slice_name)


@pytest.mark.parametrize("name,message", [
    ("v7x:2x2", r"generation in \['v5e', 'v5p', 'v6e'\]"),
    ("v5p:3x3x3", "the nearest are v5p:2x4x4, v5p:2x2x4, v5p:4x4x4"),
    ("v5e-300", "the nearest are v5e-256, v5e-128, v5e-64"),
    ("v5p-63", r"TensorCores \(2 per chip\); the nearest are v5p-64"),
    ("tpu", "is not a TPU slice jaxdistill knows"),
])
def test_a_topology_that_does_not_exist_names_the_nearest(name, message):
    with pytest.raises(ValueError, match=message):
        tpu.parse(name)
    with pytest.raises(RunError, match=message):
        info(mixture_config("sid", "tiny"), topology=name)


def test_a_mesh_or_batch_that_does_not_divide_names_the_nearest():
    config = mixture_config("sid", "tiny")
    config.mesh.shape = (4, 4, 1)
    with pytest.raises(RunError, match=r"needs 16 devices; 8 are there.*nearest are \[\(4, 2, 1\), \(2, 4, 1\), "):
        _mesh(config, jax.devices())
    config.mesh.shape = (3, 1, 1)  # a given device set (a topology) must be used whole
    with pytest.raises(RunError, match=r"product is exactly 8; the nearest are \[\(8, 1, 1\), \(4, 2, 1\), \(4, 1, 2\)\]"):
        _mesh(config, jax.devices())
    config.mesh.shape, config.train.batch_size = (4, 2, 1), 20
    with pytest.raises(RunError, match=r"train.batch_size=20 does not fit the mesh.*the nearest that fit are 16 and 24"):
        _mesh(config, jax.devices())


HLO = """
  %all-reduce.1 = f32[1024]{0} all-reduce(%x), channel_id=1, replica_groups=[2,4]<=[8], to_apply=%add
  %all-gather-start = (bf16[256,64]{1,0}, bf16[1024,64]{1,0}) all-gather-start(%y), replica_groups={{0,1,2,3},{4,5,6,7}}
  %all-gather-done = bf16[1024,64]{1,0} all-gather-done(%all-gather-start)
  %reduce-scatter = f32[128]{0:T(1024)} reduce-scatter(%z), replica_groups=mesh['data'=2,'fsdp'=4] {'fsdp'}
  %collective-permute = s32[10]{0} collective-permute(%w), source_target_pairs={{0,1},{1,0}}
"""


def test_collective_bytes_follow_the_ring_model():
    sent = costs.loop_costs("ENTRY %main () -> f32[] {\n" + HLO + "}\n", num_devices=8).collectives
    assert sent["all-reduce"] == 4096 * 2 * 3 / 4
    assert sent["all-gather"] == 1024 * 64 * 2 * 3 / 4  # the result of the async start, once
    assert sent["reduce-scatter"] == 512 * 3
    assert sent["collective-permute"] == 40 and sent["all-to-all"] == 0


# A reduce-scatter as TPU's optimised HLO writes it (the form of every fsdp gradient): a fusion
# calling an `all-reduce-scatter` computation, an all-reduce whose shard is then sliced.
REDUCE_SCATTER_HLO = """
%all-reduce-scatter (input: bf16[320,2560]) -> bf16[80,2560] {
  %input = bf16[320,2560]{1,0:T(8,128)(2,1)} parameter(0)
  %all-reduce.7 = bf16[320,2560]{1,0:T(8,128)(2,1)} all-reduce(%input), channel_id=6, replica_groups={{0,1,2,3}}, to_apply=%add
  %partition-id.4 = u32[] partition-id()
  %constant.102 = u32[] constant(80)
  %multiply.6 = u32[]{:T(128)} multiply(%partition-id.4, %constant.102)
  %constant.103 = u32[] constant(0)
  ROOT %dynamic-slice.10 = bf16[80,2560]{1,0:T(8,128)(2,1)} dynamic-slice(%all-reduce.7, %multiply.6, %constant.103), dynamic_slice_sizes={80,2560}
}

ENTRY %main (g: bf16[320,2560]) -> bf16[80,2560] {
  %g = bf16[320,2560]{1,0} parameter(0)
  ROOT %fusion = bf16[80,2560]{1,0:T(8,128)(2,1)} fusion(%g), kind=kCustom, calls=%all-reduce-scatter
}
"""


def test_tpu_reduce_scatter_fusions_count_as_reduce_scatters():
    sent = costs.loop_costs(REDUCE_SCATTER_HLO, num_devices=4).collectives
    assert sent["reduce-scatter"] == 80 * 2560 * 2 * 3 and sent["all-reduce"] == 0  # S·(n−1), S the shard


# One all-gather as TPU's optimised HLO writes an async collective it overlaps with compute: a
# start, a continuation fused with other work and a done, each a fusion holding a copy of the
# same all-gather (one channel id), here in a loop of 5 trips beside a second all-gather.
ASYNC_COLLECTIVE_HLO = """
%start (p0: bf16[1,20,1280]) -> (bf16[1,20,1280], bf16[8,20,1280]) {
  %p0 = bf16[1,20,1280]{2,1,0} parameter(0)
  %all-gather.1 = bf16[8,20,1280]{2,1,0} all-gather(%p0), channel_id=7, replica_groups=[1,8]<=[8], dimensions={0}
  ROOT %t = (bf16[1,20,1280]{2,1,0}, bf16[8,20,1280]{2,1,0}) tuple(%p0, %all-gather.1)
}

%continuation (p0: bf16[1,20,1280], x: f32[64]) -> (f32[64], bf16[8,20,1280]) {
  %p0 = bf16[1,20,1280]{2,1,0} parameter(0)
  %x = f32[64]{0} parameter(1)
  %all-gather.2 = bf16[8,20,1280]{2,1,0:S(1)} all-gather(%p0), channel_id=7, replica_groups=[1,8]<=[8], dimensions={0}
  %y = f32[64]{0} exponential(%x)
  ROOT %t = (f32[64]{0}, bf16[8,20,1280]{2,1,0:S(1)}) tuple(%y, %all-gather.2)
}

%done (p0: bf16[1,20,1280]) -> bf16[8,20,1280] {
  %p0 = bf16[1,20,1280]{2,1,0} parameter(0)
  ROOT %all-gather.3 = bf16[8,20,1280]{2,1,0} all-gather(%p0), channel_id=7, replica_groups=[1,8]<=[8], dimensions={0}
}

%other (p0: bf16[1,20,1280]) -> bf16[8,20,1280] {
  %p0 = bf16[1,20,1280]{2,1,0} parameter(0)
  ROOT %all-gather.4 = bf16[8,20,1280]{2,1,0} all-gather(%p0), channel_id=8, replica_groups=[1,8]<=[8], dimensions={0}
}

%body (p: (s32[], bf16[1,20,1280], f32[64])) -> (s32[], bf16[1,20,1280], f32[64]) {
  %p = (s32[], bf16[1,20,1280]{2,1,0}, f32[64]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %w = bf16[1,20,1280]{2,1,0} get-tuple-element(%p), index=1
  %x = f32[64]{0} get-tuple-element(%p), index=2
  %async-collective-start.1 = (bf16[1,20,1280]{2,1,0}, bf16[8,20,1280]{2,1,0}) fusion(%w), kind=kCustom, calls=%start
  %fusion.1 = (f32[64]{0}, bf16[8,20,1280]{2,1,0:S(1)}) fusion(%w, %x), kind=kCustom, calls=%continuation
  %async-collective-done.1 = bf16[8,20,1280]{2,1,0} fusion(%w), kind=kCustom, calls=%done
  %fusion.2 = bf16[8,20,1280]{2,1,0} fusion(%w), kind=kCustom, calls=%other
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  %y = f32[64]{0} get-tuple-element(%fusion.1), index=0
  ROOT %t = (s32[], bf16[1,20,1280]{2,1,0}, f32[64]{0}) tuple(%next, %w, %y)
}

%cond (p: (s32[], bf16[1,20,1280], f32[64])) -> pred[] {
  %p = (s32[], bf16[1,20,1280]{2,1,0}, f32[64]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %n = s32[] constant(5)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (w: bf16[1,20,1280], x: f32[64]) -> (s32[], bf16[1,20,1280], f32[64]) {
  %w = bf16[1,20,1280]{2,1,0} parameter(0)
  %x = f32[64]{0} parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], bf16[1,20,1280]{2,1,0}, f32[64]{0}) tuple(%zero, %w, %x)
  ROOT %loop = (s32[], bf16[1,20,1280]{2,1,0}, f32[64]{0}) while(%init), condition=%cond, body=%body
}
"""


def test_an_async_collective_split_over_fusions_counts_once():
    loop = costs.loop_costs(ASYNC_COLLECTIVE_HLO, num_devices=8)
    shard, gathered = 20 * 1280 * 2, 8 * 20 * 1280 * 2
    assert loop.collectives["all-gather"] == 5 * 2 * gathered * 7 / 8  # 5 trips × (channel 7 once + channel 8)
    # HBM: each channel's shard read and result written once (in the start); the continuation
    # reads x and writes y (its copy of the result is in VMEM); the counter's add 3 × 4 bytes
    assert loop.hbm_bytes == 5 * (2 * (shard + gathered) + 2 * 64 * 4 + 12)
    assert loop.traffic_by_kind["collectives"] == 5 * (2 * (shard + gathered) + 2 * 64 * 4)  # no matmul fused in


# Two different collective-permutes that the TPU compiler gave one channel id, as it does for
# distinct collective-permutes in one loop body (30 or 31 share channel 1 in each of three loop
# bodies of the DMD2 SD1.5 v5p-8 step).
SHARED_CHANNEL_HLO = """
ENTRY %main (a: bf16[320,48], b: bf16[48,320]) -> (bf16[320,48], bf16[48,320]) {
  %a = bf16[320,48]{1,0} parameter(0)
  %b = bf16[48,320]{1,0} parameter(1)
  %cp.1 = bf16[320,48]{1,0} collective-permute(%a), channel_id=1, source_target_pairs={{0,1},{1,2},{2,3}}
  %cp.2 = bf16[48,320]{1,0} collective-permute(%b), channel_id=1, source_target_pairs={{0,1},{1,2},{2,3}}
  ROOT %t = (bf16[320,48]{1,0}, bf16[48,320]{1,0}) tuple(%cp.1, %cp.2)
}
"""


def test_collectives_sharing_a_channel_outside_fusions_each_count():
    loop = costs.loop_costs(SHARED_CHANNEL_HLO, num_devices=4)
    assert loop.collectives["collective-permute"] == 2 * 320 * 48 * 2


# A scan of 10 matmuls as TPU HLO prints it: no known_trip_count, the bound in the condition.
LOOP_HLO = """
%body (p: (s32[], f32[64,256], f32[10,256,256])) -> (s32[], f32[64,256], f32[10,256,256]) {
  %p = (s32[], f32[64,256]{1,0}, f32[10,256,256]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[64,256]{1,0} get-tuple-element(%p), index=1
  %w = f32[10,256,256]{2,1,0} get-tuple-element(%p), index=2
  %ag = f32[64,256]{1,0:T(8,128)} all-gather(%x), replica_groups=[1,8]<=[8], dimensions={0}
  %y = f32[64,256]{1,0} fusion(%ag, %w, %i), kind=kOutput, calls=%fused_dot
  ROOT %t = (s32[], f32[64,256]{1,0}, f32[10,256,256]{2,1,0}) tuple(%i, %y, %w)
}

%fused_dot (param_0: f32[64,256], param_1: f32[10,256,256], param_2: s32[]) -> f32[64,256] {
  %param_0 = f32[64,256]{1,0} parameter(0)
  %param_1 = f32[10,256,256]{2,1,0} parameter(1)
  %param_2 = s32[] parameter(2)
  %zero = s32[] constant(0)
  %slice = f32[1,256,256]{2,1,0} dynamic-slice(%param_1, %param_2, %zero, %zero), dynamic_slice_sizes={1,256,256}
  %w_i = f32[256,256]{1,0} bitcast(%slice)
  ROOT %dot = f32[64,256]{1,0} convolution(%param_0, %w_i), dim_labels=bf_io->bf
}

%cond (p: (s32[], f32[64,256], f32[10,256,256])) -> pred[] {
  %p = (s32[], f32[64,256]{1,0}, f32[10,256,256]{2,1,0}) parameter(0)
  %bound = s32[]{:T(128)} constant(10)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %bound), direction=LT
}

ENTRY %main (x: f32[64,256], w: f32[10,256,256]) -> f32[64,256] {
  %x = f32[64,256]{1,0} parameter(0)
  %w = f32[10,256,256]{2,1,0} parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], f32[64,256]{1,0}, f32[10,256,256]{2,1,0}) tuple(%zero, %x, %w)
  %loop = (s32[], f32[64,256]{1,0}, f32[10,256,256]{2,1,0}) while(%init), condition=%cond, body=%body
  %y = f32[64,256]{1,0} get-tuple-element(%loop), index=1
  ROOT %sum = f32[64,256]{1,0} all-reduce(%y), replica_groups=[1,8]<=[8], to_apply=%add
}
"""


def test_loop_bodies_count_once_per_iteration():
    """XLA's cost analysis counts a while body once; `loop_costs` adds the other iterations:
    the body's convolution FLOPs, its kernels' bytes (the weight slice, not the stacked weights)
    and its all-gather, with the trip count read from the condition."""
    lc = costs.loop_costs(LOOP_HLO, num_devices=8)
    assert lc.unknown_trip_counts == 0
    assert lc.flops == 9 * 2 * 64 * 256 * 256
    # The all-gather reads x and writes ag (2·64·256·4); the fusion reads ag (64·256·4), the slice
    # of w (256·256·4) and the index (4), and writes y (64·256·4); ten times, then the all-reduce.
    assert lc.hbm_bytes == 10 * (2 * 64 * 256 * 4 + 2 * 64 * 256 * 4 + 256 * 256 * 4 + 4) + 2 * 64 * 256 * 4
    assert lc.collectives["all-gather"] == 10 * 64 * 256 * 4 * 7 / 8
    assert lc.collectives["all-reduce"] == 64 * 256 * 4 * 2 * 7 / 8  # outside the loop: once
    unknown = costs.loop_costs(LOOP_HLO.replace("constant(10)", "constant(10)\n  %other = s32[] constant(3)"), 8)
    assert unknown.unknown_trip_counts == 1 and unknown.flops == 0  # counted once, and said so


def test_traffic_is_filed_by_kernel_kind_and_scope_every_run_counted():
    """Each kernel's bytes, times the trips of the loops it sits in, go to its kind (the fused
    convolution: a matmul) and to the first named scope in the JAX operation it came from."""
    hlo = LOOP_HLO.replace("calls=%fused_dot", 'calls=%fused_dot, metadata={op_name="jit(step)/while/body/'
                           'critic_update/transpose(jvp(critic_update))/dot_general"}')
    lc = costs.loop_costs(hlo, num_devices=8, scopes=("critic_update", "generator_update"))
    fusion, gather = 64 * 256 * 4 + 256 * 256 * 4 + 4 + 64 * 256 * 4, 2 * 64 * 256 * 4
    assert lc.traffic_by_kind["matmuls and convolutions"] == 10 * fusion
    assert lc.traffic_by_kind["collectives"] == 10 * gather + 2 * 64 * 256 * 4  # the all-reduce after the loop
    assert lc.traffic_by_scope == {"critic_update": 10 * fusion, "generator_update": 0.0, "other": 10 * gather + gather}
    top = lc.top_kernels[0]
    assert (top.bytes, top.calls, top.kind, top.type) == (10 * fusion, 10, "matmuls and convolutions", "f32[64,256]")
    assert top.op_name.endswith("critic_update))/dot_general")


def test_traffic_counts_the_tiles_a_tpu_layout_pads_to():
    """A TPU layout stores its two minor-most dimensions (in minor-to-major order) in 8 × 128
    tiles: a [64, 64, 4] latent with channels minor moves 32× its elements, with rows minor 2×."""
    def moved(layout: str) -> float:
        hlo = ("ENTRY %main (x: f32[64,64,4]) -> f32[64,64,4] {\n"
               f"  %x = f32[64,64,4]{{{layout}}} parameter(0)\n"
               f"  ROOT %y = f32[64,64,4]{{{layout}}} negate(%x)\n}}\n")
        return costs.loop_costs(hlo, num_devices=1).traffic_by_kind["elementwise"]

    assert moved("2,1,0") == 2 * 64 * 64 * 4 * 4  # no tiles: its elements
    assert moved("2,1,0:T(8,128)") == 2 * 64 * 64 * 128 * 4
    assert moved("1,0,2:T(8,128)") == 2 * 64 * 128 * 4 * 4  # dimension 1 (64) minor, padded to 128


# What XLA's memory-space assignment makes of a TPU program (from a v5e compile, trimmed): an
# operand prefetched into VMEM (S(1)) by an async copy, a result kept there, and a buffer brought
# in by two async slices and joined in VMEM.
VMEM_HLO = """
%fused_sin (p0: bf16[4096,4096]) -> bf16[4096,4096] {
  %p0 = bf16[4096,4096]{1,0:T(8,128)(2,1)} parameter(0)
  ROOT %s = bf16[4096,4096]{1,0:T(8,128)(2,1)S(1)} sine(%p0)
}

%fused_mul (p0: bf16[4096,4096], p1: bf16[4096,4096]) -> bf16[4096,4096] {
  %p0 = bf16[4096,4096]{1,0:T(8,128)(2,1)S(1)} parameter(0)
  %p1 = bf16[4096,4096]{1,0:T(8,128)(2,1)S(1)} parameter(1)
  ROOT %m = bf16[4096,4096]{1,0:T(8,128)(2,1)} multiply(%p0, %p1)
}

ENTRY %main (a: bf16[4096,4096], b: s8[8388608]) -> (bf16[4096,4096], s8[8388608]) {
  %a = bf16[4096,4096]{1,0:T(8,128)(2,1)} parameter(0)
  %b = s8[8388608]{0:T(1024)(128)(4,1)} parameter(1)
  %copy-start = (bf16[4096,4096]{1,0:T(8,128)(2,1)S(1)}, bf16[4096,4096]{1,0:T(8,128)(2,1)}, u32[]{:S(2)}) copy-start(%a)
  %sin = bf16[4096,4096]{1,0:T(8,128)(2,1)S(1)} fusion(%a), kind=kLoop, calls=%fused_sin
  %copy-done = bf16[4096,4096]{1,0:T(8,128)(2,1)S(1)} copy-done(%copy-start)
  %mul = bf16[4096,4096]{1,0:T(8,128)(2,1)} fusion(%sin, %copy-done), kind=kLoop, calls=%fused_mul
  %slice-start.0 = ((s8[8388608]{0:T(1024)(128)(4,1)}), s8[4194304]{0:T(1024)(128)(4,1)S(1)}, s32[]{:S(2)}) slice-start(%b), slice={[0:4194304]}
  %slice-start.1 = ((s8[8388608]{0:T(1024)(128)(4,1)}), s8[4194304]{0:T(1024)(128)(4,1)S(1)}, s32[]{:S(2)}) slice-start(%b), slice={[4194304:8388608]}
  %slice-done.0 = s8[4194304]{0:T(1024)(128)(4,1)S(1)} slice-done(%slice-start.0)
  %slice-done.1 = s8[4194304]{0:T(1024)(128)(4,1)S(1)} slice-done(%slice-start.1)
  %joined = s8[8388608]{0:T(1024)(128)(4,1)S(1)} custom-call(%slice-done.0, %slice-done.1), custom_call_target="ConcatBitcast"
  %evict-start = (s8[8388608]{0:T(1024)(128)(4,1)}, s8[8388608]{0:T(1024)(128)(4,1)S(1)}, u32[]{:S(2)}) copy-start(%joined)
  %evicted = s8[8388608]{0:T(1024)(128)(4,1)} copy-done(%evict-start)
  ROOT %out = (bf16[4096,4096]{1,0:T(8,128)(2,1)}, s8[8388608]{0:T(1024)(128)(4,1)}) tuple(%mul, %evicted)
}
"""


def test_hbm_traffic_leaves_out_what_stays_in_vmem():
    """Arrays in VMEM (memory space 1) are not HBM traffic; the async copies and slices that move
    them count on their HBM side only: here a is read twice (the sine, the prefetch), the product
    written once, b read once in two slices and written once when evicted."""
    a, b = 4096 * 4096 * 2, 8388608
    lc = costs.loop_costs(VMEM_HLO, num_devices=1)
    assert lc.hbm_bytes == 3 * a + 2 * b
    assert lc.traffic_by_kind["other"] == 0  # the join in VMEM


# Splash attention's kernels as the TPU compiler prints them (from a v5p compile of its gradient,
# trimmed): the forward at top level with 1024-token tiles, the dkv kernel in a loop of 2 with
# 512-token tiles, the dq kernel without metadata (the kernel's default tiles, 128).
SPLASH_HLO = """
%body (p: (s32[], bf16[2,2,4096,128], f32[2,2,8,4096])) -> (s32[], bf16[2,2,4096,128], f32[2,2,8,4096]) {
  %p = (s32[], bf16[2,2,4096,128]{3,2,1,0}, f32[2,2,8,4096]{3,2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %q = bf16[2,2,4096,128]{3,2,1,0:T(8,128)(2,1)} get-tuple-element(%p), index=1
  %lse = f32[2,2,8,4096]{3,2,1,0:T(8,128)} get-tuple-element(%p), index=2
  %mask = s8[1,1,1]{2,1,0} constant({ { {1} } })
  %splash_mha_dkv_no_residuals.1 = (f32[2,4096,128]{2,1,0:T(8,128)}, f32[2,4096,128]{2,1,0:T(8,128)}, bf16[2,2,4096,128]{3,2,1,0:T(8,128)(2,1)}, bf16[2,2,4096,128]{3,2,1,0:T(8,128)(2,1)}) custom-call(%mask, %mask, %q, %q, %q, /*index=5*/%lse, %q, %lse), custom_call_target="tpu_custom_call", operand_layout_constraints={s8[1,1,1]{2,1,0}, s8[1,1,1]{2,1,0}, bf16[2,2,4096,128]{3,2,1,0}, bf16[2,2,4096,128]{3,2,1,0}, bf16[2,2,4096,128]{3,2,1,0}, f32[2,2,8,4096]{3,2,1,0}, bf16[2,2,4096,128]{3,2,1,0}, f32[2,2,8,4096]{3,2,1,0}}, frontend_attributes={kernel_metadata={
"xprof_metadata":"{\\"block_q_dkv\\": 512, \\"block_kv_dkv\\": 512, \\"block_kv_dkv_compute\\": 512, \\"q_layout\\": 1, \\"k_layout\\": 1, \\"v_layout\\": 1}"
}}, metadata={op_name="jit(f)/splash_mha_dkv_no_residuals/splash_mha_dkv_no_residuals/pallas_call"}
  %dk = bf16[2,2,4096,128]{3,2,1,0:T(8,128)(2,1)} get-tuple-element(%splash_mha_dkv_no_residuals.1), index=2
  ROOT %t = (s32[], bf16[2,2,4096,128]{3,2,1,0}, f32[2,2,8,4096]{3,2,1,0}) tuple(%i, %dk, %lse)
}

%cond (p: (s32[], bf16[2,2,4096,128], f32[2,2,8,4096])) -> pred[] {
  %p = (s32[], bf16[2,2,4096,128]{3,2,1,0}, f32[2,2,8,4096]{3,2,1,0}) parameter(0)
  %bound = s32[] constant(2)
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%i, %bound), direction=LT
}

ENTRY %main (q: bf16[2,2,4096,128], lse: f32[2,2,8,4096]) -> bf16[2,2,4096,128] {
  %q = bf16[2,2,4096,128]{3,2,1,0} parameter(0)
  %lse = f32[2,2,8,4096]{3,2,1,0} parameter(1)
  %mask = s8[1,1,1]{2,1,0} constant({ { {1} } })
  %splash_mha_fwd_residuals.1 = (f32[2,4096,128]{2,1,0:T(8,128)}, bf16[2,2,4096,128]{3,2,1,0:T(8,128)(2,1)}, f32[2,2,4096,128]{3,2,1,0:T(8,128)}) custom-call(%mask, %mask, %q, %q, %q), custom_call_target="tpu_custom_call", operand_layout_constraints={s8[1,1,1]{2,1,0}, s8[1,1,1]{2,1,0}, bf16[2,2,4096,128]{3,2,1,0}, bf16[2,2,4096,128]{3,2,1,0}, bf16[2,2,4096,128]{3,2,1,0}}, frontend_attributes={kernel_metadata={
"xprof_metadata":"{\\"block_q\\": 1024, \\"block_kv\\": 1024, \\"block_kv_compute\\": 1024, \\"block_q_dkv\\": 1024, \\"block_kv_dkv\\": 1024, \\"block_kv_dkv_compute\\": 1024, \\"block_q_dq\\": 1024, \\"block_kv_dq\\": 1024, \\"use_fused_bwd_kernel\\": false}"
}}, metadata={op_name="jit(f)/splash_mha_fwd_residuals/splash_mha_fwd_residuals/pallas_call"}
  %o = bf16[2,2,4096,128]{3,2,1,0} get-tuple-element(%splash_mha_fwd_residuals.1), index=1
  %zero = s32[] constant(0)
  %init = (s32[], bf16[2,2,4096,128]{3,2,1,0}, f32[2,2,8,4096]{3,2,1,0}) tuple(%zero, %o, %lse)
  %loop = (s32[], bf16[2,2,4096,128]{3,2,1,0}, f32[2,2,8,4096]{3,2,1,0}) while(%init), condition=%cond, body=%body
  %dk = bf16[2,2,4096,128]{3,2,1,0} get-tuple-element(%loop), index=1
  %splash_mha_dq_no_residuals.1 = (f32[2,4096,128]{2,1,0:T(8,128)}, bf16[2,2,4096,128]{3,2,1,0:T(8,128)(2,1)}) custom-call(%mask, %mask, %dk, %q, %q, /*index=5*/%lse, %q, %lse), custom_call_target="tpu_custom_call"
  ROOT %dq = bf16[2,2,4096,128]{3,2,1,0} get-tuple-element(%splash_mha_dq_no_residuals.1), index=1
}
"""


def test_splash_kernels_are_counted_from_their_shapes_and_tiles():
    """XLA sees no FLOPs in a Pallas kernel: `loop_costs` counts each splash call's matmuls
    (forward 2, dq 3, dkv 2 + its 2 gradients, each 2·b·H·Lq·Lk·D FLOPs) on every loop iteration,
    and the re-reads its tiles cost: K and V per 1024-query tile (forward) or per 128-query tile
    (dq, no metadata), Q and dO per 512-key tile (dkv)."""
    lc = costs.loop_costs(SPLASH_HLO, num_devices=4)
    matmul, array = 2 * 2 * 2 * 4096 * 4096 * 128, 2 * 2 * 4096 * 128 * 2  # FLOPs; bytes of q, k, v or dO
    assert lc.splash_calls == 1 + 2 + 1
    assert lc.splash_flops == (2 + 2 * 4 + 3) * matmul
    assert lc.splash_bytes == (4096 // 1024 - 1) * 2 * array + 2 * (4096 // 512 - 1) * 2 * array + (4096 // 128 - 1) * 2 * array


# The same kernels with one example per device, as the TPU compiler prints them for SDXL's 64×64
# self-attention (from a v5e-256 compile of a DMD2 step, trimmed): the batch dimension is gone.
SQUEEZED_SPLASH_HLO = """
ENTRY %main (q: bf16[10,4096,128], lse: f32[10,8,4096]) -> bf16[10,4096,128] {
  %q = bf16[10,4096,128]{2,1,0:T(8,128)(2,1)} parameter(0)
  %lse = f32[10,8,4096]{2,1,0} parameter(1)
  %mask = s8[1,4,4]{2,1,0} constant({ { {1, 1, 1, 1}, {1, 1, 1, 1}, {1, 1, 1, 1}, {1, 1, 1, 1} } })
  %splash_mha_fwd_residuals.100 = (f32[1024,128]{1,0:T(8,128)}, f32[1024,128]{1,0:T(8,128)}, f32[1024,128]{1,0:T(8,128)}, bf16[10,4096,128]{2,1,0:T(8,128)(2,1)S(1)}, f32[10,4096,128]{2,1,0:T(8,128)}) custom-call(%mask, %mask, %q, %q, %q), custom_call_target="tpu_custom_call", operand_layout_constraints={s8[1,4,4]{2,1,0}, s8[1,4,4]{2,1,0}, bf16[10,4096,128]{2,1,0}, bf16[10,4096,128]{2,1,0}, bf16[10,4096,128]{2,1,0}}, frontend_attributes={kernel_metadata={
"xprof_metadata":"{\\"block_q\\": 1024, \\"block_kv\\": 1024, \\"block_kv_compute\\": 1024, \\"block_q_dkv\\": 1024, \\"block_kv_dkv\\": 1024, \\"block_kv_dkv_compute\\": 1024, \\"block_q_dq\\": 1024, \\"block_kv_dq\\": 1024, \\"use_fused_bwd_kernel\\": false}"
}}
  %o = bf16[10,4096,128]{2,1,0} get-tuple-element(%splash_mha_fwd_residuals.100), index=3
  %splash_mha_dkv_no_residuals.30 = (f32[1024,128]{1,0:T(8,128)}, f32[1024,128]{1,0:T(8,128)}, bf16[10,4096,128]{2,1,0:T(8,128)(2,1)S(1)}, bf16[10,4096,128]{2,1,0:T(8,128)(2,1)S(1)}) custom-call(%mask, %mask, %o, %q, %q, /*index=5*/%lse, %q, %lse), custom_call_target="tpu_custom_call", operand_layout_constraints={s8[1,4,4]{2,1,0}, s8[1,4,4]{2,1,0}, bf16[10,4096,128]{2,1,0}, bf16[10,4096,128]{2,1,0}, bf16[10,4096,128]{2,1,0}, f32[10,8,4096]{2,1,0}, bf16[10,4096,128]{2,1,0}, f32[10,8,4096]{2,1,0}}, frontend_attributes={kernel_metadata={
"xprof_metadata":"{\\"block_q_dkv\\": 1024, \\"block_kv_dkv\\": 1024, \\"block_kv_dkv_compute\\": 1024}"
}}
  ROOT %dk = bf16[10,4096,128]{2,1,0} get-tuple-element(%splash_mha_dkv_no_residuals.30), index=2
}
"""


def test_splash_kernels_with_one_example_per_device_are_counted():
    """With one example per device the kernels' q, k and v are [H, L, D] (b = 1), next to masks
    of rank 3 too; each still counts its matmuls and re-reads."""
    lc = costs.loop_costs(SQUEEZED_SPLASH_HLO, num_devices=256)
    matmul, array = 2 * 10 * 4096 * 4096 * 128, 10 * 4096 * 128 * 2
    assert lc.splash_calls == 2
    assert lc.splash_flops == (2 + 2 + 2) * matmul
    assert lc.splash_bytes == 2 * (4096 // 1024 - 1) * 2 * array


def test_a_scanned_step_costs_what_the_unrolled_one_does():
    """Compiled on the CPU: a scan of 10 matmul layers (value and gradient) against the same
    program unrolled, whose cost analysis sees every layer; the lowered program (before XLA's
    optimisation, whose text names values without a %) is counted the same."""
    def grad(unroll):
        def f(w, x):
            return jax.lax.scan(lambda h, w: (jnp.tanh(h @ w), None), x, w, unroll=unroll)[0].sum()
        return jax.jit(jax.grad(f)).lower(jnp.ones((10, 128, 128)), jnp.ones((32, 128)))

    scanned, unrolled = grad(1).compile(), grad(True).compile()
    expected = unrolled.cost_analysis()["flops"]
    assert scanned.cost_analysis()["flops"] < 0.2 * expected  # XLA alone: the body once
    step = costs.step_cost(scanned, 1)
    assert step.unknown_trip_counts == 0
    assert abs(step.flops / expected - 1) < 0.05, (step.flops, expected)
    assert "%" not in grad(1).as_text(dialect="hlo").split("ENTRY")[1]
    lowered_flops = costs.program_flops(grad(1))
    assert abs(lowered_flops / expected - 1) < 0.05, (lowered_flops, expected)


# 27-48 s (three compiles of the tiny DMD2 step through `info`): `make test-all`; CI keeps the
# scan count of tests/test_unet.py::test_the_planner_counts_every_scanned_layer.
@pytest.mark.heavy
def test_every_critic_update_is_counted(tmp_path):
    """DMD2's critic updates run as a lax.scan; the planner counts each of them: every two more
    updates add the same FLOPs, and the same bytes filed under the critic updates. The traffic
    filed by kernel kind and by scope adds up to the step's HBM bytes. The HLO `info` saves
    (`hlo_out`) is counted again to the same report without compiling."""
    flops, critic_bytes = [], []
    for n in (3, 5, 7):
        config = mixture_config("dmd2", "tiny")
        config.optim.n_critic = n
        hlo = str(tmp_path / f"step{n}.hlo.gz")
        report = info(config, hlo_out=hlo, print_fn=lambda *_: None)
        assert report["loops_counted_once"] == 0
        flops.append(report["step_flops_per_device"])
        critic_bytes.append(report["hbm_traffic_by_scope"]["critic_update"])
        filed = sum(report["hbm_traffic_by_kind"].values())
        assert filed == report["step_bytes_accessed_per_device"] == sum(report["hbm_traffic_by_scope"].values())
        with gzip.open(hlo, "rt") as f:
            again = costs.hlo_step_cost(f.read(), math.prod(report["mesh"].values()), {"flops": report["xla_flops_per_device"]},
                                        report["memory_per_device"], UPDATE_SCOPES)
        assert (again.flops, again.bytes_accessed, again.collectives) == (
            report["step_flops_per_device"], filed, report["collective_bytes_per_device"])
    assert flops[1] - flops[0] == flops[2] - flops[1] > 0.25 * flops[0]
    assert critic_bytes[1] - critic_bytes[0] == critic_bytes[2] - critic_bytes[1] > 0


def test_an_hlo_path_that_cannot_be_written_fails_before_the_compile(tmp_path):
    """`info --hlo_out` makes the file's folder, or stops before compiling (a 256-chip compile
    takes over an hour on a 2-core host) when it cannot: here its parent is a file, then the path
    is a folder."""
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RunError, match=r"--hlo_out=.*a_file/step.hlo.gz.*cannot create its folder"):
        info(mixture_config("sid", "tiny"), hlo_out=str(tmp_path / "a_file" / "step.hlo.gz"))
    (tmp_path / "a_folder").mkdir()  # a path that names a folder, not a file
    with pytest.raises(RunError, match=r"--hlo_out=.*a_folder'? cannot be written: give a file path"):
        info(mixture_config("sid", "tiny"), hlo_out=str(tmp_path / "a_folder"))


def test_an_out_of_memory_compile_error_is_read():
    e = RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
                     "(32.00G) exceeds available HBM (15.75G).")
    assert costs.hbm_shortfall(e) == (32 * 2**30, int(15.75 * 2**30))
    assert costs.hbm_shortfall(RuntimeError("Used 17.5G of 15.75G hbm. Exceeded hbm capacity by 1.75G.")) == (
        int(17.5 * 2**30), int(15.75 * 2**30))
    assert costs.hbm_shortfall(ValueError("something else")) is None


def _has_libtpu() -> bool:
    try:
        tpu.devices(tpu.parse("v5e:2x2"))
        return True
    except RuntimeError:
        return False


@pytest.mark.skipif(not _has_libtpu(), reason="needs the libtpu extra: pip install \"jax[tpu]==<jax version>\"")
def test_a_step_compiles_for_a_tpu_slice_without_one():
    config = mixture_config("dmd2", "tiny")
    config.mesh.shape = (2, 2, 1)
    report = info(config, topology="v5e:2x2", print_fn=lambda *_: None)
    assert report["devices"].startswith("4 × TPU v5 lite (v5e:2x2, v5e-4)")
    assert report["estimate"]["images_per_s"] > 0 and report["estimate"]["binds"] in ("compute", "hbm", "ici")


@pytest.mark.skipif(not _has_libtpu(), reason="needs the libtpu extra: pip install \"jax[tpu]==<jax version>\"")
@pytest.mark.parametrize("per_chip", [2, 1])
def test_splash_attention_compiled_for_a_tpu_slice_is_counted(per_chip):
    """The gradient of splash attention compiled for a v5e:2x2: XLA's cost analysis sees almost
    none of its FLOPs; `step_cost` counts the forward, dq and dkv kernels' (4 + 6 + 8)·H·L²·D per
    example, head_dim padded from 40 to 128, also with one example per chip, where the compiler
    drops the kernels' batch dimension."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxdistill.models import attention, target

    mesh = Mesh(np.array(tpu.devices(tpu.parse("v5e:2x2"))), ("fsdp",))
    qkv = [jax.ShapeDtypeStruct((4 * per_chip, 2048, 2, 40), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp")))] * 3
    loss = lambda q, k, v: attention.attention(q, k, v, impl="splash").astype(jnp.float32).sum()  # noqa: E731
    with target.compiling_for(mesh):
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(*qkv).compile()
    step, expected = costs.step_cost(compiled, 4), (4 + 6 + 8) * per_chip * 2 * 2048 * 2048 * 128
    assert step.splash_calls == 3 and step.splash_flops == expected
    assert compiled.cost_analysis()["flops"] < 0.01 * expected < step.flops


@pytest.mark.heavy
def test_info_compiles_a_stable_diffusion_step_from_config_files_alone(tmp_path):
    folder = make_tiny_sd(str(tmp_path / "sd"), "sd15")
    for path in tmp_path.rglob("*.safetensors"):
        path.unlink()
    config = sd_config("sid_lsg", "tiny", resolution=32, guidance="sid_lsg", kappa=1.5,
                       optim=dict(gen_lr=1e-6, critic_lr=1e-6, n_critic=1, ema_decay=0.99), batch_size=8, steps=2)
    config.teacher.path, config.mesh.shape, config.train.batch_size = folder, (2, 2, 1), 8
    report = info(config, print_fn=lambda *_: None)
    assert report["collective_bytes_per_device"]["all-gather"] > 0  # fsdp-sharded generator, critic and teacher
    assert report["parameters"]["teacher"] > report["parameters"]["generator"] > 0


# About 190 s on the 2-core machine (two builds and compiles of the whole step, 72 and 82 s), so
# `make test-all` only. No cheaper program stands in for it: the tiny SDXL UNet's gradient alone
# at (1, 8, 1), its inputs sharded, drawn inside the program, gathered from a prompt bank or
# concatenated with unconditional ones, costs the same FLOPs with and without `shard_batch`.
@pytest.mark.heavy
def test_fsdp_computes_each_devices_share_of_the_batch_only(tmp_path):
    """The SDXL-shaped SiD-LSG step with its weights sharded over fsdp (1, 8, 1) costs each
    device what data parallelism (8, 1, 1) does: the UNet pins its activations to the batch
    axes (`target.shard_batch`). Without that, XLA's partitioner gathered the activations and
    each device computed the whole batch: 1.9× the FLOPs and 3.4× the temporaries of data
    parallelism here (2.9× and 4.9× without `target.gather_weight` too; measured 2026-11-25)."""
    from jaxdistill.train.program import build_run

    folder = make_tiny_sd(str(tmp_path / "sd"), "sdxl")
    for path in tmp_path.rglob("*.safetensors"):
        path.unlink()
    cost = {}
    for mesh in ((8, 1, 1), (1, 8, 1)):
        config = sd_config("sid_lsg", "tiny", resolution=32, guidance="sid_lsg", kappa=1.5,
                           optim=dict(gen_lr=1e-6, critic_lr=1e-6, n_critic=1, ema_decay=0.99), batch_size=8, steps=2)
        config.teacher.path, config.mesh.shape, config.train.batch_size = folder, mesh, 8
        job = build_run(config, abstract=True)
        cost[mesh] = costs.step_cost(job.distiller.compile(job.teacher, FAST_COMPILE), 8)
    data, fsdp = cost[(8, 1, 1)], cost[(1, 8, 1)]
    assert fsdp.flops < 1.05 * data.flops and fsdp.memory["temp"] < 1.2 * data.memory["temp"], (
        data.flops, fsdp.flops, data.memory, fsdp.memory)


def test_the_prompt_bank_is_split_over_the_batch_axes_and_padding_is_never_drawn(tmp_path):
    from jaxdistill.teachers.stable_diffusion import sd_problem, sharded_prompt_bank
    from jaxdistill.train.sharding import BATCH_AXES

    sd = StableDiffusion.from_pretrained(make_tiny_sd(str(tmp_path / "sd"), "sdxl"))
    prompts = ["a red circle", "a blue square", "a green triangle"]
    mesh = make_mesh((4, 2, 1))
    bank = sharded_prompt_bank(sd, prompts, 32, mesh, BATCH_AXES)
    whole = prompt_bank(sd, prompts, 32)
    for key, rows in bank["cond"].items():
        assert rows.shape[0] == 8 and rows.sharding.spec == jax.sharding.PartitionSpec(BATCH_AXES)
        np.testing.assert_allclose(np.asarray(rows[:3]), np.asarray(whole["cond"][key]), atol=1e-6)
        np.testing.assert_allclose(np.asarray(rows[3:]), np.broadcast_to(np.asarray(whole["cond"][key][2:]),
                                                                        rows[3:].shape), atol=1e-6)
    unet_def, unet = nnx.split(sd.unet, nnx.Param)
    problem = sd_problem(sd, unet_def, 32, num_prompts=len(prompts))
    cond, _ = jax.jit(problem.sample_conditions, static_argnums=2)({"prompts": bank}, jax.random.key(0), 256)
    drawn = np.asarray(cond["text_embeds"])
    which = np.argmin(((drawn[:, None] - np.asarray(whole["cond"]["text_embeds"])[None]) ** 2).sum(-1), axis=1)
    assert np.allclose(drawn, np.asarray(whole["cond"]["text_embeds"])[which], atol=1e-6)
    assert set(which) == {0, 1, 2} and np.bincount(which).min() > 60  # uniform over the real prompts only


def test_a_generator_ladder_above_the_vp_teachers_largest_sigma_is_refused():
    from jaxdistill.train.program import build_run

    # DMD2's registry ladder is EDM's σ_max = 80; SD's scaled-linear table ends at σ 14.6146.
    config = sd_config("dmd2", "", resolution=512, guidance="dmd2", kappa=1.75, optim=dict(gen_lr=1e-6),
                       batch_size=8, steps=1, architecture="sd15")
    with pytest.raises(RunError, match=r"method.sigma_ladder=\(80.0,\) goes above this teacher's largest σ 14.6146.*"
                                        r"sigma_ladder='\(14.6146,\)'"):
        build_run(config, abstract=True, num_prompts=8)


@pytest.mark.skipif(not _has_libtpu(), reason="needs the libtpu extra: pip install \"jax[tpu]==<jax version>\"")
def test_fsdp_kernels_are_gathered_not_windowed_on_a_tpu_slice():
    """SD1.5's 64×64 feed-forward at 32 samples per chip on a v5p-64 at (1, 32, 1): with its
    kernels gathered before use (`target.gather_weight`) XLA adds no windowed-einsum loops, and
    the HBM traffic is a fraction of the windowed program's (8.8 against 104.2 GB measured),
    gradients returned to the kernels' shards included (constrained there directly, XLA ran the
    gradient matmuls as windowed einsums again: 45.2 GB)."""
    fsdp_gather = _experiment("fsdp_gather")
    devices = tpu.devices(tpu.parse("v5p-64"))
    mesh = make_mesh((1, 32, 1), devices)
    cost = {}
    for kernels in fsdp_gather.KERNELS:
        compiled = fsdp_gather.compile_feed_forward(mesh, 320, 4096, 32 * 32, kernels)
        assert ("windowed_dot_general" in compiled.as_text()) == (kernels == "as split")
        cost[kernels] = costs.step_cost(compiled, 32)
    assert cost["gathered"].bytes_accessed < 0.2 * cost["as split"].bytes_accessed
    # returning the gradients to the kernels' shards adds no windowed einsum of its own
    assert cost["gathered"].bytes_accessed <= 1.01 * cost["gathered, gradient whole"].bytes_accessed


def _experiment(name: str):
    """The script experiments/`name`.py, imported as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(
        os.path.dirname(__file__), "..", "experiments", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _has_commit(commit: str) -> bool:
    import subprocess

    return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=os.path.dirname(__file__),
                          capture_output=True).returncode == 0 if shutil.which("git") else False


@pytest.mark.skipif(not _has_commit("8a98074"), reason="needs this repository's git history (commit 8a98074)")
def test_a_saved_step_is_counted_as_an_earlier_commit_counted_it():
    """`experiments/count_at_commit.py` loads `costs.py` from a commit and sums the step's HBM
    bytes as that commit's `step_cost` did: before 2026-11-25, XLA's bytes accessed (each loop
    body once) plus the later loop iterations' kernels; today, every kernel by jaxdistill's count."""
    count_at_commit = _experiment("count_at_commit")
    xla = {"flops": 0.0, "bytes accessed": 123.0}
    memory = dict.fromkeys(("argument", "output", "temp", "alias", "generated_code"), 0)
    body = 2 * 64 * 256 * 4 + 2 * 64 * 256 * 4 + 256 * 256 * 4 + 4  # the loop body's kernels (as above)
    today = count_at_commit.step_counts(costs, LOOP_HLO, 8, xla, memory)
    assert today[0] == today[1] == 10 * body + 2 * 64 * 256 * 4  # every iteration, then the all-reduce
    assert count_at_commit.step_counts(count_at_commit.costs_at("HEAD"), LOOP_HLO, 8, xla, memory) == today
    old = count_at_commit.step_counts(count_at_commit.costs_at("8a98074"), LOOP_HLO, 8, xla, memory)
    assert old[0] == 123 + 9 * body  # XLA's count of the first iteration, its own of the other nine
    assert old[2] == today[2]
    with pytest.raises(SystemExit, match="--commit no-such-commit"):
        count_at_commit.costs_at("no-such-commit")


def test_a_refused_planning_compile_keeps_the_compilers_report(monkeypatch):
    """A compile the TPU compiler refuses for memory costs up to an hour and a half on a 2-core host:
    `tpu_plan.plan` keeps the whole text of the compiler's error, not only the two numbers its row
    prints."""
    import jaxdistill.commands.info as info_command

    said = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
            "(17.50G) exceeds available HBM (15.75G).")  # this libtpu's form (experiments/oom_accounting.py)

    def refused(config, **_):
        try:
            raise RuntimeError(said)
        except RuntimeError as e:
            raise RunError("the train step does not fit v5e-256") from e

    monkeypatch.setattr(info_command, "info", refused)
    r = _experiment("tpu_plan").plan("dmd2/sd15", "v5e-256", 4096, (4, 64, 1), "full")
    assert (r["fits"], r["needs"], r["free"], r["compiler_said"]) == (
        False, int(17.5 * 2**30), int(15.75 * 2**30), said)


def test_a_planning_search_keeps_each_compile_as_it_ends(tmp_path, monkeypatch, capsys):
    """`experiments/tpu_plan.py --out` doubles the batch while it fits, then writes the row; each
    compile is also written to `<out>.compiles.jsonl` when it ends, so a search stopped during a
    later compile keeps the earlier ones, readable as rows (by `--reread` through `saved_records`)."""
    import json
    import sys

    tpu_plan = _experiment("tpu_plan")
    stop_at = {"batch": None}

    def compile_at(recipe, slice_name, batch, mesh, remat, scan_layers, microbatches, attention, hlo_dir):
        if batch == stop_at["batch"]:
            raise KeyboardInterrupt
        if batch > 1024:
            return {"fits": False, "batch": batch, "seconds": 7.0, "needs": 2 * 2**30, "free": 2**30}
        hlo = str(tmp_path / f"{batch}.hlo.gz")
        return {"fits": True, "batch": batch, "seconds": 5.0, "global_batch": batch, "hlo": hlo,
                "memory_per_device": {"peak": batch * 2**20},
                "estimate": {"hbm_fraction": batch / 4096, "images_per_s": batch / 2, "binds": "HBM"}}

    monkeypatch.setattr(tpu_plan, "plan", compile_at)
    out = str(tmp_path / "rows.md")
    monkeypatch.setattr(sys, "argv", ["tpu_plan.py", "--rows", "sid_lsg/sd15/v5p-8", "--out", out,
                                      "--hlo_dir", str(tmp_path)])
    tpu_plan.main()

    def lines(path):
        with open(path) as f:
            return [json.loads(line) for line in f]

    [row] = lines(out + ".jsonl")
    assert row["best"]["batch"] == 1024 and [t[:2] for t in row["tried"]] == [[512, True], [1024, True], [2048, False]]
    compiles = lines(out + ".compiles.jsonl")
    assert [c["tried"] for c in compiles] == [[t] for t in row["tried"]]
    assert [(c["best"] or {}).get("batch") for c in compiles] == [512, 1024, None]
    assert "not_fitting" not in compiles[0] and compiles[2]["not_fitting"]["needs"] == 2 * 2**30
    with open(out) as f:
        assert "| sid_lsg/sd15 | v5p-8 | (1, 4, 1) | full | 1024 | 1.00 GiB (25%) | 512.0 | HBM |" in f.read()
    capsys.readouterr()
    assert [r["best"]["batch"] for r in tpu_plan.saved_records(out + ".compiles.jsonl")] == [512, 1024]
    assert ("sid_lsg/sd15 on v5p-8: no compile fitted (2048 needs 2.00 GiB of 1.00 GiB "
            "(7 s)), nothing to read again") in capsys.readouterr().err

    stop_at["batch"] = 1024  # stopped during the second compile: the first is kept, no row written
    os.remove(out + ".compiles.jsonl")
    with pytest.raises(KeyboardInterrupt):
        tpu_plan.main()
    assert len(lines(out + ".jsonl")) == 1
    [kept] = tpu_plan.saved_records(out + ".compiles.jsonl")
    assert kept["best"]["batch"] == 512 and kept["recipe"] == "sid_lsg/sd15" and kept["slice"] == "v5p-8"


def test_a_planning_search_stops_at_a_step_the_compiler_accepts_past_the_hbm(monkeypatch):
    """A step the TPU compiler accepts while XLA's memory analysis puts it past the chip's HBM is
    at the edge (as `jaxdistill info` says), not planned on: the search stops doubling there and
    the row's batch is the one below it, bounded from above, not "≥" the accepted one."""
    tpu_plan = _experiment("tpu_plan")

    def compile_at(recipe, slice_name, batch, mesh, remat, scan_layers, microbatches, attention, hlo_dir):
        return {"fits": True, "batch": batch, "seconds": 5.0, "global_batch": batch,
                "memory_per_device": {"peak": batch * 2**20},
                "estimate": {"hbm_fraction": batch / 2000, "images_per_s": batch / 2, "binds": "HBM"}}

    monkeypatch.setattr(tpu_plan, "plan", compile_at)
    kept = []
    best, tried = tpu_plan.search("sid_lsg/sd15", "v5p-8", 5, on_compile=lambda t, r: kept.append(t))
    assert best["batch"] == 1024 and [t[:2] for t in tried] == [(512, True), (1024, True), (2048, False)]
    assert kept == tried
    line = tpu_plan.row("sid_lsg/sd15", "v5p-8", best, tried)
    assert "| full | 1024 | 1.00 GiB (51%) |" in line
    assert "2048 at the edge (2.00 GiB, 102% of the HBM) (5 s)" in line


def test_a_saved_steps_traffic_is_counted_with_and_without_vmem(tmp_path):
    """`experiments/hbm_traffic.py --saved` reads a planning record's saved step and counts its
    kernels' bytes twice: in HBM only (jaxdistill's count), and with every memory taken as HBM,
    which adds what the compiler keeps in VMEM (`VMEM_HLO`: the sine's result, the prefetched
    copy of a and the two slices joined in VMEM)."""
    import gzip

    hbm_traffic = _experiment("hbm_traffic")
    path = str(tmp_path / "step.hlo.gz")
    with gzip.open(path, "wt") as f:
        f.write(VMEM_HLO)
    record = {"best": {"hlo": path, "mesh": {"data": 1, "fsdp": 1, "tensor": 1}, "memory_per_device": {"peak": 0},
                       "xla_flops_per_device": 0.0, "xla_bytes_accessed_per_device": 0.0}}
    by_kind = {kind: (hbm, every) for kind, hbm, every in hbm_traffic.saved_step_traffic(record)}
    a, b = 4096 * 4096 * 2, 8388608
    assert by_kind["all"][0] == 3 * a + 2 * b  # as test_hbm_traffic_leaves_out_what_stays_in_vmem counts it
    assert by_kind["other"] == (0, 2 * b)  # the join reads b's two halves and writes b, all in VMEM
    assert all(every >= hbm for hbm, every in by_kind.values()) and by_kind["all"][1] > by_kind["all"][0] + 2 * b
