"""What students train on: prompts, toy-world renders, and cached teacher rollouts (noise → teacher DDIM sample).

Both data sets are computed once by the main process, cached in the run's work folder and
reloaded on resume. Images are kept in the teacher's model space: x = 2·image − 1 for a pixel teacher,
scaled VAE latents for a latent one (teacher rollouts stay the sampled latents, never decoded and re-encoded).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch

from dreamdistill.config import Range, Seed
from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.distill.loop import Run
from dreamdistill.errors import DreamDistillError
from dreamdistill.fileio import torch_save_atomic


@dataclass
class DataConfig:
    """Where clean images and prompts come from."""

    source: Literal["teacher", "toyworld"] = "teacher"
    """Clean images that PD and guided distillation noise: teacher = the CFG teacher's own DDIM samples
    (works for any teacher); toyworld = fresh toy-world renders with their captions (the toy teacher's
    training distribution). KD and DMD's regression loss always use teacher rollouts."""
    size: Annotated[int, Range(1, 10**7)] = 4096
    """Number of cached images (renders or teacher rollouts)."""
    rollout_steps: Annotated[int, Range(1, 1000)] = 64
    """DDIM steps of the teacher rollouts (the ODE solution KD regresses to)."""
    seed: Seed = 7
    """Seed of the renders, the rollout noise and the rollout prompts."""
    generate_batch: Annotated[int, Range(1, 65536)] = 256
    """Batch size while sampling teacher rollouts."""


@dataclass
class PairSet:
    """Cached clean images (model space) with their prompts, and the noise they were sampled from if any."""

    x0: torch.Tensor  # [N, C, H, W] float32, CPU
    prompts: list[str]
    noise: torch.Tensor | None = None  # [N, C, H, W] float32, CPU: x0 = teacher DDIM rollout from this noise

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, list[str], torch.Tensor | None]:
        """(x0, prompts, noise) of the rows ``index``, tensors on ``device``."""
        noise = None if self.noise is None else self.noise[index].to(device)
        return self.x0[index].to(device), [self.prompts[i] for i in index.tolist()], noise


def training_prompts(teacher: Teacher, prompts_file: str | None = None) -> list[str]:
    """Prompts to distill on: the lines of ``prompts_file``, else every caption of a toy teacher's vocabulary."""
    if prompts_file:
        path = Path(prompts_file)
        if not path.is_file():
            raise DreamDistillError(f"prompts file {path} does not exist; pass a text file with one prompt per line")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise DreamDistillError(f"prompts file {path} is empty; write one prompt per line")
        return prompts
    vocabulary = teacher.info.vocabulary
    if not vocabulary or not vocabulary.get("categories"):
        raise DreamDistillError(f"teacher {teacher.info.path} has no toy vocabulary to draw prompts from; "
                                "pass --set prompts=FILE with one prompt per line")
    from dreamdistill.toyworld.captions import caption

    colours = vocabulary.get("colours") or [""]
    views = vocabulary.get("views") or ["front"]
    return [caption(colour, category, view).replace("a  ", "a ")
            for colour, category, view in itertools.product(colours, vocabulary["categories"], views)]


def teacher_rollouts(run: Run, teacher: Teacher, prompts: list[str], cfg: float, config: DataConfig) -> PairSet:
    """``config.size`` (noise, teacher DDIM sample) pairs with random prompts, cached in the work folder."""
    path = run.work_dir / f"rollouts-{config.size}-steps{config.rollout_steps}-cfg{cfg:g}-seed{config.seed}.pt"
    if run.is_main and not path.is_file():
        from tqdm.auto import tqdm

        generator = torch.Generator().manual_seed(config.seed)
        chosen = [prompts[i] for i in torch.randint(len(prompts), (config.size,), generator=generator).tolist()]
        noise = torch.randn((config.size, *teacher.model_shape), generator=generator)
        samples = []
        for start in tqdm(range(0, config.size, config.generate_batch), desc=f"teacher rollouts ({config.rollout_steps}"
                          f" DDIM steps, cfg {cfg:g})", unit="batch", dynamic_ncols=True):
            stop = start + config.generate_batch
            x0 = teacher.sample_x0(chosen[start:stop], steps=config.rollout_steps, guidance_scale=cfg,
                                   noise=noise[start:stop])
            if teacher.info.format == "pixel":  # a pixel rollout is kept as the image it decodes to (clamped)
                x0 = teacher.images_to_model(teacher.model_to_images(x0))
            samples.append(x0.float().cpu())
        torch_save_atomic(path, {"noise": noise, "x0": torch.cat(samples), "prompts": chosen})
    run.wait()
    data = torch.load(path, map_location="cpu", weights_only=False)
    return PairSet(data["x0"], data["prompts"], data["noise"])


def toyworld_images(run: Run, teacher: Teacher, config: DataConfig) -> PairSet:
    """``config.size`` captioned toy-world renders at the teacher's resolution, cached in the work folder."""
    path = run.work_dir / f"toyworld-{config.size}-{teacher.image_size}px-seed{config.seed}.pt"
    if run.is_main and not path.is_file():
        from dreamdistill.toyworld.dataset import render_dataset

        batch = render_dataset(config.size, seed=config.seed, resolution=teacher.image_size, progress=True)
        torch_save_atomic(path, {"images": batch.images, "captions": batch.captions})
    run.wait()
    data = torch.load(path, map_location="cpu", weights_only=False)
    with torch.no_grad():  # in batches: a latent teacher's VAE encodes them
        x0 = torch.cat([teacher.images_to_model(images.float() / 255.0).float().cpu()
                        for images in data["images"].split(config.generate_batch)])
    return PairSet(x0, list(data["captions"]))


def clean_images(run: Run, teacher: Teacher, prompts: list[str], cfg: float, config: DataConfig) -> PairSet:
    """The clean images PD and guided distillation noise, from ``config.source``."""
    if config.source == "toyworld":
        return toyworld_images(run, teacher, config)
    return teacher_rollouts(run, teacher, prompts, cfg, config)
