"""A tiny random Stable Diffusion folder in diffusers format, written by the PyTorch reference
libraries (diffusers, transformers) exactly as a downloaded model is laid out:

    model_index.json, scheduler/scheduler_config.json, unet/, vae/, text_encoder/, tokenizer/
    [text_encoder_2/, tokenizer_2/ for the SDXL shape]

32×32 images, 16×16×4 latents, a one-level UNet (resnet + cross-attention transformer down, mid
and up: every SD layer kind, the smallest graph to compile), a 2-level VAE, 2-layer CLIP
encoders over a 16-token vocabulary of a few words. Used by the SD teacher and end-to-end training tests.
"""

from __future__ import annotations

import json
import os

from jaxdistill.world import vocab

WORDS = ["a", "red", "blue", "circle", "square", "photo", "of"]
MAX_TOKENS = 16


def write_tokenizer(folder: str, max_length: int = MAX_TOKENS) -> int:
    """A tiny CLIP tokenizer whose words are WORDS; returns the vocabulary size."""
    return vocab.write_tokenizer(folder, WORDS, max_length)


def make_tiny_sd(folder: str, kind: str = "sd15", prediction_type: str = "epsilon", seed: int = 0) -> str:
    """Write a tiny random SD1.5- ('sd15') or SDXL-shaped ('sdxl') folder; returns `folder`."""
    import torch
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(seed)
    os.makedirs(folder, exist_ok=True)
    vocab = write_tokenizer(os.path.join(folder, "tokenizer"))
    bos, eos = vocab - 2, vocab - 1
    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=MAX_TOKENS, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    transformers.CLIPTextModel(transformers.CLIPTextConfig(hidden_act="quick_gelu", **text)).save_pretrained(
        os.path.join(folder, "text_encoder"))
    unet = dict(block_out_channels=(32,), layers_per_block=1, norm_num_groups=8, sample_size=16,
                down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                attention_head_dim=4, cross_attention_dim=32)
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    if kind == "sdxl":
        write_tokenizer(os.path.join(folder, "tokenizer_2"))
        transformers.CLIPTextModelWithProjection(
            transformers.CLIPTextConfig(hidden_act="gelu", projection_dim=32, **text)).save_pretrained(
            os.path.join(folder, "text_encoder_2"))
        unet.update(cross_attention_dim=64,
                    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
                    projection_class_embeddings_input_dim=32 + 6 * 8)
        index.update(_class_name="StableDiffusionXLPipeline", force_zeros_for_empty_prompt=True,
                     text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
                     tokenizer_2=["transformers", "CLIPTokenizer"])
    elif kind != "sd15":
        raise ValueError(f"kind {kind!r}: use 'sd15' or 'sdxl'.")
    UNet2DConditionModel(**unet).save_pretrained(os.path.join(folder, "unet"))
    AutoencoderKL(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  sample_size=32).save_pretrained(os.path.join(folder, "vae"))
    os.makedirs(os.path.join(folder, "scheduler"), exist_ok=True)
    with open(os.path.join(folder, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump({"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                   "beta_end": 0.012, "num_train_timesteps": 1000, "prediction_type": prediction_type,
                   "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False}, f)
    with open(os.path.join(folder, "model_index.json"), "w") as f:
        json.dump(index, f)
    return folder


def write_prompts(path: str) -> str:
    with open(path, "w") as f:
        f.write("a red circle\na blue square\na photo of a red square\n")
    return path
