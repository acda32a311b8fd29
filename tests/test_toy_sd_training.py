"""toy-sd's training: the tokenizer's BPE, the paraphrases, each loss's wiring, resume, and the exported folder."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from dreamdistill.toyworld import sd_text
from dreamdistill.toyworld import train_sd_teacher as sd


def test_bpe_merges_golden():
    """Worked by hand: 'ab'×2, 'abc'×1 merge (a, b</w>) (count 2), then the tie (a, b) < (b, c</w>), then
    (ab, c</w>)."""
    merges = sd_text.learn_merges(Counter({"ab": 2, "abc": 1}))
    assert merges == [("a", "b</w>"), ("a", "b"), ("ab", "c</w>")]


def test_tokenizer_reads_every_training_word_as_one_token_and_anything_else_without_unknowns(tmp_path):
    from transformers import CLIPTokenizer

    tokenizer = sd_text.build_tokenizer(24)
    for word in sd_text.corpus_words():
        pieces = tokenizer.tokenize(word)
        assert pieces == [word + "</w>"], (word, pieces)
    ids = tokenizer("a dragon, 3/4 view!").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    tokenizer.save_pretrained(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    text = "a small green table, side view"
    assert reloaded(text).input_ids == tokenizer(text).input_ids and reloaded.model_max_length == 24


def test_paraphrases_name_the_three_words_and_never_use_the_held_out_wordings():
    rng = random.Random(0)
    seen_templates = set()
    for _ in range(400):
        text = sd_text.paraphrase("red", "chair", "overhead", rng)
        assert "red" in text and "chair" in text and ("overhead" in text or "top" in text)
        assert not any(filler in text.split() for filler in sd_text.HELD_OUT_FILLERS)
        seen_templates.add(text)
    assert "a red chair, overhead view" in seen_templates and len(seen_templates) > 20
    from dreamdistill.toyworld.captions import parse_prompt

    for template in sd_text.TRAINING_TEMPLATES + sd_text.HELD_OUT_TEMPLATES:  # the evaluator's parser reads them
        text = template.format(colour="blue", category="mug", view="back", seen="back", filler="shiny")
        assert parse_prompt(text)[:2] == ("blue", "mug")


def test_min_snr_eps_weight_golden():
    """min(SNR, γ)/SNR: 1 below γ, γ/SNR above it."""
    log_snr = torch.tensor([0.0, 2.0]).double()  # SNR 1 and e² ≈ 7.389
    weight = sd.min_snr_eps_weight(log_snr, 5.0)
    assert weight.tolist() == pytest.approx([1.0, 5.0 / torch.e ** 2])


class RecordingUNet(torch.nn.Module):
    """Returns a fixed prediction and records what it was given."""

    def __init__(self, prediction: torch.Tensor):
        super().__init__()
        self.prediction = torch.nn.Parameter(prediction.clone())

    def forward(self, x_t, t, encoder_hidden_states):
        self.seen = (x_t.clone(), t.clone(), encoder_hidden_states)
        return type("Out", (), {"sample": self.prediction.expand_as(x_t)})()


def test_eps_loss_wiring():
    """x_t = α_t z + σ_t ε at the drawn t; the target is that ε; the weight is min-SNR-γ at t; text passes through."""
    schedule = sd.NoiseSchedule.from_scheduler(sd.build_sd_scheduler())
    latents, text = torch.randn(3, 4, 2, 2), torch.randn(3, 5, 8)
    unet = RecordingUNet(torch.zeros(1, 4, 2, 2))
    loss = sd.eps_loss(unet, schedule, latents, text, torch.Generator().manual_seed(7), gamma=5.0)
    replay = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (3,), generator=replay)
    eps = torch.randn(latents.shape, generator=replay)
    alpha_bar = schedule.alphas_cumprod[t]
    x_t = alpha_bar.sqrt().float().view(-1, 1, 1, 1) * latents + (1 - alpha_bar).sqrt().float().view(-1, 1, 1, 1) * eps
    seen_x, seen_t, seen_text = unet.seen
    assert torch.equal(seen_t, t) and seen_text is text
    torch.testing.assert_close(seen_x, x_t)
    snr = alpha_bar / (1 - alpha_bar)
    weight = snr.clamp(max=5.0) / snr
    expected = (weight.float() * (eps ** 2).mean(dim=(1, 2, 3))).mean()  # prediction 0: ‖0 − ε‖²
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert unet.prediction.grad.abs().sum() > 0


def test_vae_loss_terms_and_gradients():
    """KL(N(μ, σ²) ‖ N(0, 1)) per element matches torch.distributions; encoder and decoder both get gradients."""
    torch.manual_seed(0)
    vae = sd.build_vae(16, 32)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    losses = sd.vae_loss(vae, images, kl_weight=0.5, generator=torch.Generator().manual_seed(0))
    posterior = vae.encode(images).latent_dist
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(posterior.mean, posterior.std),
                                           torch.distributions.Normal(0.0, 1.0)).mean()
    torch.testing.assert_close(losses["kl"], kl, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(losses["loss"], losses["l1"] + losses["mse"] + 0.5 * losses["kl"])
    losses["loss"].backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0 and vae.decoder.conv_out.weight.grad.abs().sum() > 0


def test_psnr_golden():
    images, references = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.1)
    assert float(sd.psnr(images, references)) == pytest.approx(20.0)  # −10 log10(0.01)


TINY = ["--set", "held_out=8", "--set", "resolution=64", "--set", "vae_crop=32", "--set", "vae_width=16",
        "--set", "unet_width=32", "--set", "text_width=64", "--set", "text_layers=1", "--dataset-size", "40",
        "--set", "tiny_encoder_steps=0", "--threads", "1"]


def _train(tmp_path, *extra: str) -> int:
    from dreamdistill.cli import main

    return main(["train-teacher", "--format", "sd", "--out", str(tmp_path / "toy-sd"), "--work-dir",
                 str(tmp_path / "work"), *TINY, *extra])


def test_vae_stage_resumes_to_the_same_weights(tmp_path):
    """Two steps, then a rerun to four, equal four in one go (each step draws from its own seeded generator)."""
    assert _train(tmp_path / "a", "--stage", "vae", "--set", "vae_steps=4") == 0
    assert _train(tmp_path / "b", "--stage", "vae", "--set", "vae_steps=2") == 0
    state = torch.load(tmp_path / "b" / "work" / "vae.pt")
    state["finished"] = False  # as if stopped at step 2
    torch.save(state, tmp_path / "b" / "work" / "vae.pt")
    assert _train(tmp_path / "b", "--stage", "vae", "--set", "vae_steps=4") == 0
    one_go, resumed = (torch.load(tmp_path / run / "work" / "vae.pt")["vae"] for run in ("a", "b"))
    for key in one_go:
        torch.testing.assert_close(one_go[key], resumed[key], msg=key)


def test_trained_folder_loads_in_plain_diffusers_and_agrees_with_our_sampler(tmp_path):
    """The whole recipe, tiny: the folder has SD's layout, fp16 weights, loads in StableDiffusionPipeline, and its
    DDIM samples equal ``Teacher.sample``'s under the same seed, steps and guidance."""
    import json

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from dreamdistill.diffusion.teacher import Teacher

    assert _train(tmp_path, "--set", "vae_steps=2", "--set", "unet_steps=2", "--set", "decoder_steps=2") == 0
    folder = tmp_path / "toy-sd"
    assert {p.name for p in folder.iterdir()} >= {"model_index.json", "vae", "unet", "text_encoder", "tokenizer",
                                                  "scheduler", "dreamdistill.json"}
    vae_config = json.loads((folder / "vae" / "config.json").read_text())
    latents = torch.load(tmp_path / "work" / "latents.pt")
    assert vae_config["scaling_factor"] == pytest.approx(1 / float(latents["latents"].float().std()))
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["beta_schedule"], scheduler["beta_start"], scheduler["beta_end"], scheduler["prediction_type"]) \
        == ("scaled_linear", 0.00085, 0.012, "epsilon")
    from safetensors.torch import load_file

    assert all(t.dtype == torch.float16 for t in load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
               .values())
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.safety_checker is None
    prompt = "a red chair, front view"
    theirs = pipe(prompt, num_inference_steps=4, guidance_scale=3.0, generator=torch.Generator().manual_seed(3),
                  output_type="pt", height=64, width=64).images
    teacher = Teacher.from_pretrained(folder, device="cpu", dtype=torch.float32)
    assert teacher.info.vocabulary["categories"][0] == "chair" and teacher.image_size == 64
    assert teacher.vocabulary_warning("a small green table, side view") is None  # "small": a trained filler
    assert "unknown: dragon" in teacher.vocabulary_warning("a small dragon")
    ours = teacher.sample([prompt], steps=4, guidance_scale=3.0, seed=3)
    torch.testing.assert_close(ours, theirs.float(), atol=2e-3, rtol=0)
    assert _train(tmp_path) == 0  # a rerun of the finished recipe only exports again


def test_init_from_starts_each_stage_from_a_shipped_folder(tmp_path):
    """--set init_from=FOLDER: a stage with no checkpoint starts from the folder's (fp16) weights."""
    from dreamdistill.toyworld.sd_text import build_tokenizer

    assert _train(tmp_path / "a", "--set", "vae_steps=1", "--set", "unet_steps=1", "--set", "decoder_steps=0") == 0
    folder = tmp_path / "a" / "toy-sd"
    config = sd.SDTeacherTrainConfig(init_from=str(folder), vae_width=16, resolution=64, unet_width=32,
                                     text_width=64, text_layers=1)
    tokenizer = build_tokenizer(config.max_text_length)
    for part, module in (("vae", sd.build_vae(16, 64)), ("unet", sd.build_latent_unet(32, 8, 64)),
                         ("text_encoder", sd.build_text_encoder(len(tokenizer), tokenizer.bos_token_id,
                                                                tokenizer.eos_token_id, 64, 1, 24))):
        sd._warm_start(module, config, part)
        shipped = torch.load(tmp_path / "a" / "work" / ("vae.pt" if part == "vae" else "unet.pt"))
        key = {"vae": "vae", "unet": "unet_ema", "text_encoder": "text_ema"}[part]
        for name, value in module.state_dict().items():
            torch.testing.assert_close(value, shipped[key][name].half().float(), msg=name)


def test_a_warm_start_that_keeps_the_vae_continues_the_folder(tmp_path):
    """init_from with vae_steps=0: the folder's VAE and scaling factor are kept, and the exported notes count the
    folder's steps plus this run's; vae_steps=0 alone is refused."""
    import json

    from safetensors.torch import load_file

    assert _train(tmp_path / "a", "--set", "vae_steps=1", "--set", "unet_steps=1", "--set", "decoder_steps=0") == 0
    first = tmp_path / "a" / "toy-sd"
    assert _train(tmp_path / "b", "--set", f"init_from={first}", "--set", "vae_steps=0", "--set", "unet_steps=2",
                  "--set", "decoder_steps=0", "--set", "seed=1") == 0
    second = tmp_path / "b" / "toy-sd"
    read = lambda folder, name: json.loads((folder / name).read_text())  # noqa: E731
    assert read(second, "vae/config.json")["scaling_factor"] == read(first, "vae/config.json")["scaling_factor"]
    kept, shipped = (load_file(folder / "vae" / "diffusion_pytorch_model.safetensors") for folder in (first, second))
    assert all(torch.equal(kept[key], shipped[key]) for key in kept)
    assert read(first, "dreamdistill.json")["trained_steps"] == {"unet": 1, "vae": 1}
    notes = read(second, "dreamdistill.json")
    assert notes["trained_steps"] == {"unet": 3, "vae": 1}
    assert notes["continued_from"]["recipe"] == read(first, "dreamdistill.json")["recipe"]
    assert notes["continued_from"]["trained_steps"] == {"unet": 1, "vae": 1}
    assert _train(tmp_path / "c", "--set", "vae_steps=0") == 2
