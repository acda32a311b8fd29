"""Tiny random teachers in both folder formats, written to a temp folder (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def tiny_pixel_unet(image_size: int = 16, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=image_size, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=384, attention_head_dim=8, norm_num_groups=4, **extra,
    )


def tiny_scheduler(prediction_type: str = "v_prediction", **extra):
    from diffusers import DDIMScheduler

    settings = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type,
                    clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    return DDIMScheduler(**{**settings, **extra})


def write_tiny_pixel_teacher(folder: Path, image_size: int = 16, prediction_type: str = "v_prediction",
                             vocabulary: dict | None = None) -> Path:
    """A random pixel-format teacher folder (the toy teacher's format)."""
    from dreamdistill.diffusion.teacher import MINILM_NAME, TEACHER_CONFIG_NAME

    folder = Path(folder)
    tiny_pixel_unet(image_size).save_pretrained(folder / "unet")
    tiny_scheduler(prediction_type).save_pretrained(folder / "scheduler")
    config = {"format": "pixel", "image_size": image_size, "text_encoder": MINILM_NAME, "max_text_length": 8,
              "vocabulary": vocabulary, "default_steps": 4, "default_cfg": 3.0}
    (folder / TEACHER_CONFIG_NAME).write_text(json.dumps(config))
    return folder


def write_tiny_sd_teacher(folder: Path, prediction_type: str = "epsilon", vocabulary: dict | None = None) -> Path:
    """A random Stable-Diffusion-shaped folder: VAE latents (16 px images -> 8² latents), CLIP text encoder, a
    complete model_index.json (plain ``StableDiffusionPipeline.from_pretrained`` loads it) and, with a
    ``vocabulary``, toy-sd's dreamdistill.json notes."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from dreamdistill.diffusion.teacher import minilm_path

    folder = Path(folder)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.model_max_length = 12
    tokenizer.save_pretrained(folder / "tokenizer")
    text_config = CLIPTextConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=37,
                                 num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77)
    CLIPTextModel(text_config).save_pretrained(folder / "text_encoder")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  sample_size=16).save_pretrained(folder / "vae")
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=4,
    ).save_pretrained(folder / "unet")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False,
                  steps_offset=1).save_pretrained(folder / "scheduler")
    model_index = {"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
                   "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", type(tokenizer).__name__],
                   "unet": ["diffusers", "UNet2DConditionModel"],
                   "scheduler": ["diffusers", "DDIMScheduler"], "safety_checker": [None, None],
                   "feature_extractor": [None, None], "requires_safety_checker": False}
    (folder / "model_index.json").write_text(json.dumps(model_index))
    if vocabulary is not None:
        notes = {"vocabulary": vocabulary, "default_steps": 4, "default_cfg": 3.0}
        (folder / "dreamdistill.json").write_text(json.dumps(notes))
    return folder
