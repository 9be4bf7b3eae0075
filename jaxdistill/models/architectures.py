"""The published Stable Diffusion UNet configurations (diffusers `unet/config.json`), and what a
teacher of each architecture conditions on: for planning a run (`jaxdistill info --topology`)
and checking shapes without any weights.

Each entry: the UNet config, the VAE's downsampling factor, the text context [tokens, width],
the pooled text embedding width (SDXL) and the scheduler's prediction type.
"""

from __future__ import annotations

CA, D, CU, U = "CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"

SD15_UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768, "down_block_types": [CA, CA, CA, D],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": [U, CU, CU, CU]}
SD21_UNET = {
    **SD15_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "dual_cross_attention": False,
    "num_class_embeds": None, "only_cross_attention": False, "sample_size": 96, "upcast_attention": True,
    "use_linear_projection": True}
SDXL_UNET = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "cross_attention_dim": 2048, "cross_attention_norm": None,
    "down_block_types": [D, CA, CA], "downsample_padding": 1, "dual_cross_attention": False,
    "encoder_hid_dim": None, "encoder_hid_dim_type": None, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 4, "layers_per_block": 2, "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default", "sample_size": 128, "time_cond_proj_dim": None,
    "time_embedding_act_fn": None, "time_embedding_dim": None, "time_embedding_type": "positional",
    "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10], "up_block_types": [CU, CU, U],
    "upcast_attention": None, "use_linear_projection": True}

ARCHITECTURES = {
    # name: (UNet config, VAE factor, text context (tokens, width), pooled width or 0, prediction type)
    "sd15": (SD15_UNET, 8, (77, 768), 0, "epsilon"),
    "sd21": (SD21_UNET, 8, (77, 1024), 0, "v_prediction"),
    "sdxl": (SDXL_UNET, 8, (77, 2048), 1280, "epsilon"),
}


def architecture(name: str) -> tuple:
    """The `ARCHITECTURES` entry of `name`, or an error listing the known names."""
    if name not in ARCHITECTURES:
        raise ValueError(f"teacher.architecture={name!r} is not known; use one of {sorted(ARCHITECTURES)}, or set "
                         "teacher.path to a diffusers folder (only its config files are read for planning).")
    return ARCHITECTURES[name]
