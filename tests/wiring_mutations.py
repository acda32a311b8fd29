"""Break the training-step wiring by hand, one mutation at a time, and check that tests/test_wiring.py fails.

    python tests/wiring_mutations.py [WORD]   # CAUGHT / MISSED per row whose file, test file or text has WORD

Each row: (file, exact original text, broken text, the -k expression of the tests that must catch it[, the test
file, default tests/test_wiring.py]). A break that moves code gives tuples of texts: each original is replaced by
its broken text in turn.
Every file is restored after its run. Not part of the suite (it reruns pytest once per mutation, a few minutes).
"""

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDS, VSD = "dreamdistill/guidance/sds.py", "dreamdistill/guidance/vsd.py"
FIELD, VOLUME, LIFTER = "dreamdistill/scene/field.py", "dreamdistill/render/volume.py", "dreamdistill/lift3d/lifter.py"
SDF_TESTS, LIFT_TESTS = "tests/test_sdf.py", "tests/test_lift3d.py"
SCHEDULES, STEP_TESTS = "dreamdistill/lift3d/schedules.py", "tests/test_lifter_wiring.py"
REGULARIZERS = "dreamdistill/lift3d/regularizers.py"
IMAGE_SPACE, IMAGE_SPACE_TESTS = "dreamdistill/guidance/image_space.py", "tests/test_image_space_sds.py"
TINY, TINY_TESTS = "dreamdistill/toyworld/train_tiny_encoder.py", "tests/test_tiny_encoder.py"
OCCUPANCY_UPDATE = ("        if self.occupancy is not None:\n"
                    "            self.occupancy.update(self.field.density, self.step_size, step=step, "
                    "generator=generator)\n")
MUTATIONS = [
    (SDS, "distillation_gradient(images.detach().float(), target.to(images.device),",
     "distillation_gradient(target.to(images.device), images.detach().float(),", "oracle", IMAGE_SPACE_TESTS),
    (SDS, "self.image_gain = encoder_gain(encode, images, generator=torch.Generator().manual_seed(0))",
     "self.image_gain = 1.0", "oracle", IMAGE_SPACE_TESTS),
    (IMAGE_SPACE, "(gain * weight * alpha / sigma).float()", "(gain * weight).float()", "oracle", IMAGE_SPACE_TESTS),
    (IMAGE_SPACE, "alpha=alpha.float(), sigma=sigma.float())", "alpha=sigma.float(), sigma=alpha.float())", "oracle",
     IMAGE_SPACE_TESTS),
    (IMAGE_SPACE, "return float(total / probes / images.numel())", "return float(total / probes / z.numel())",
     "known_mean_eigenvalue", IMAGE_SPACE_TESTS),
    (SDS, "        return sigma**2", "        return sigma", "test_sds_image_gradient"),
    (SDS, "eps=eps.float(), alpha=alpha, sigma=sigma), alpha, sigma",
     "eps=eps.float(), alpha=sigma, sigma=alpha), alpha, sigma", "test_sds_image_gradient"),
    (SDS, "* (eps_target - eps_reference)", "* (eps_reference - eps_target)",
     "test_sds_image_gradient or test_vsd_gradient"),
    (SDS, "    progress = min(max(progress, 0.0), 1.0)", "    progress = 0.0", "test_timesteps_follow"),
    (VSD, "prediction_type=schedule.prediction_type)", 'prediction_type="epsilon")', "test_critic_dsm_target"),
    (VSD, "        with self.active(camera):\n            return",
     "        with self.active(None):\n            return", "test_critic_sees"),
    (VSD, "            layer._disable_adapters = not on", "            layer.enable_adapters(on)",
     "test_critic_training_moves"),
    (VSD, "eps_critic = self.critic.predict_eps(x_t, t, text, camera)", "eps_critic = eps", "test_vsd_gradient"),
    ("dreamdistill/distill/progressive.py", "pd_weight(schedule.log_snr(s)", "pd_weight(schedule.log_snr(t)",
     "test_pd_round"),
    ("dreamdistill/distill/progressive.py", "x0=x0_fn(x_u, u), alpha_s=alpha_u", "x0=x0_fn(x_u, s), alpha_s=alpha_u",
     "test_pd_round"),
    ("dreamdistill/distill/guided.py", "(x_t, t, text, w).x0\n    prediction", "(x_t, t, text, 1.0).x0\n    prediction",
     "test_guided_stage1"),
    ("dreamdistill/distill/kd.py", "timestep = int(student_schedule(teacher).timesteps(1)[0])", "timestep = 0",
     "test_kd_student"),
    ("dreamdistill/distill/dmd.py", "x0_real=x0_real, x0_fake=x0_fake", "x0_real=x0_fake, x0_fake=x0_real",
     "test_dmd"),
    ("dreamdistill/distill/dmd.py", "x0_real = real(x_t, t, text, config.cfg).x0",
     "x0_real = real(x_t, t, text, 1.0).x0", "test_dmd"),
    ("dreamdistill/distill/sid.py", "x0_real=x0_real, x0_fake=x0_fake, alpha",
     "x0_real=x0_fake, x0_fake=x0_real, alpha", "test_sid_step"),
    ("dreamdistill/distill/sid.py", "        with frozen(fake):", "        with contextlib.nullcontext():",
     "test_sid_step"),
    ("dreamdistill/distill/sid.py", "((x0_real - x) - alpha * gap)", "((x0_real - x) + alpha * gap)",
     "test_sid_generator_gradient"),
    ("dreamdistill/distill/sid.py", "x0_real = real(x_t, t, text, config.cfg).x0", "x0_real = real(x_t, t, text).x0",
     "test_sid_step"),
    ("dreamdistill/distill/sid.py", '(unwrap(fake), "cfg")(x_t, t, text, fake_cfg).x0',
     '(unwrap(fake), "cfg")(x_t, t, text).x0',
     "test_sid_step or test_sid_generator_loss"),
    ("dreamdistill/distill/sid.py", "    with torch.no_grad():\n        normaliser", "    if True:\n        normaliser",
     "test_sid_generator_loss"),
    ("dreamdistill/distill/sid.py", "((x0_real - x) - alpha * gap)", "((x0_real - x) - 1.2 * gap)",
     "test_sid_generator_loss"),
    ("dreamdistill/distill/sid.py", "x = generate(teacher, generator, ctx.randn(batch_size, *shape), text, timestep)",
     "x = generate(teacher, generator, ctx.randn(batch_size, *shape), text, timestep).detach()",
     "test_sid_generator_loss"),
    ("dreamdistill/distill/fake_score.py", "(x_t, t, text, guidance)", "(x_t, t, text)", "test_sid_generator_loss"),
    ("dreamdistill/distill/fake_score.py", "prediction_type=teacher.prediction_type)", 'prediction_type="epsilon")',
     "test_sid_generator_loss"),
    # the sdf geometry: density of −d (not d), detached eikonal weights, β from the schedule, export at d = 0
    (FIELD, "torch.where(sdf > 0, half, 1.0 - half)", "torch.where(sdf > 0, 1.0 - half, half)", "laplace or sphere",
     SDF_TESTS),
    (VOLUME, "    return weights.detach() * (gradient_norm - 1).square()",
     "    return weights * (gradient_norm - 1).square()", "eikonal_penalty", SDF_TESTS),
    (VOLUME, "gradient_norm.index_put((visible,), gradient.norm(dim=-1))",
     "gradient_norm.index_put((visible,), gradient.norm(dim=-1).detach())", "eikonal_reaches", SDF_TESTS),
    (LIFTER, "            self.field.beta.fill_(sdf_beta_at(config.scene, progress))",
     "            self.field.beta.fill_(config.scene.sdf_beta)", "eikonal", LIFT_TESTS),
    (LIFTER, "return_eikonal=config.regularizers.eikonal > 0)", "return_eikonal=False)", "eikonal", LIFT_TESTS),
    ("dreamdistill/export.py", "config = replace(config, threshold=field_.surface_density())", "pass",
     "zero_level", SDF_TESTS),
    # the normalised distortion: divided by opacity² + ε, and only when asked for
    ("dreamdistill/lift3d/regularizers.py", "distortion / (opacity.square() + DISTORTION_OPACITY_FLOOR)",
     "distortion / (opacity + DISTORTION_OPACITY_FLOOR)", "normalised_distortion", LIFT_TESTS),
    ("dreamdistill/lift3d/regularizers.py", "distortion / (opacity.square() + DISTORTION_OPACITY_FLOOR)",
     "distortion / (opacity.detach().square() + DISTORTION_OPACITY_FLOOR)", "normalised_distortion", LIFT_TESTS),
    ("dreamdistill/lift3d/regularizers.py", "if config.distortion_normalised\n", "if True\n",
     "regularisers_are_counted", LIFT_TESTS),
    # the field's initial weights from scene.init_seed, the draws from seed
    (LIFTER, "torch.manual_seed(config.seed if init_seed is None else init_seed)", "torch.manual_seed(config.seed)",
     "init_seed", LIFT_TESTS),
    # Lifter.step's wiring (tests/test_lifter_wiring.py): per-camera labels and embedding, schedules, flags, optimiser
    (LIFTER, "        views = cameras.view_labels()", "        views = [cameras.view_labels()[0]] * len(cameras)",
     "own_view_label", STEP_TESTS),
    (LIFTER, "learning_rate_factor(config.optim.final_learning_rate_factor,\n" + " " * 69 + "progress)",
     "learning_rate_factor(config.optim.final_learning_rate_factor,\n" + " " * 69 + "0.0)",
     "scheduled_learning_rate", STEP_TESTS),
    (LIFTER, 'group["lr"] = group["initial_lr"] * learning_rate_factor',
     'group["lr"] = self.optimizer.param_groups[0]["initial_lr"] * learning_rate_factor',
     "scheduled_learning_rate", STEP_TESTS),
    (LIFTER, "        resolution = resolution_at(r, progress)", "        resolution = resolution_at(r, 1.0)",
     "resolution_and_active_levels", STEP_TESTS),
    (LIFTER, "        self.field.active_levels = active_levels(config.scene, progress)",
     "        self.field.active_levels = None", "resolution_and_active_levels", STEP_TESTS),
    (LIFTER, "        shading = pick_shading(r, progress, generator)", '        shading = "diffuse"',
     "shading_follows", STEP_TESTS),
    (LIFTER, "        light = camera_light(cameras, r, generator)", "        light = None", "shading_follows",
     STEP_TESTS),
    (LIFTER, "        if self.occupancy is not None:\n", "        if self.occupancy is None:\n", "occupancy_is_updated",
     STEP_TESTS),
    (LIFTER, (OCCUPANCY_UPDATE, "        views = cameras.view_labels()\n"),
     ("", "        views = cameras.view_labels()\n" + OCCUPANCY_UPDATE), "occupancy_is_updated", STEP_TESTS),
    (LIFTER, "camera=cameras.embedding())",
     "camera=sample_cameras(r.batch_size, config.cameras, generator).embedding())", "embedding_and_the_progress",
     STEP_TESTS),
    (LIFTER, "self.guidance(out.image, views, progress,", "self.guidance(out.image, views, 0.0,",
     "embedding_and_the_progress", STEP_TESTS),
    (LIFTER, "self.guidance(out.image, views,", "self.guidance(out.image.detach(), views,",
     "embedding_and_the_progress or scheduled_learning_rate", STEP_TESTS),
    (LIFTER, "return_normals=config.regularizers.needs_normals,", "return_normals=config.regularizers.orientation > 0,",
     "asked_for_exactly_when_weighted", STEP_TESTS),
    ("dreamdistill/lift3d/config.py", "return self.orientation > 0 or self.normal_smoothness > 0",
     "return self.orientation > 0", "asked_for_exactly_when_weighted", STEP_TESTS),
    (REGULARIZERS, "    weight = length.detach()", "    weight = length", "normal_smoothness", LIFT_TESTS),
    (REGULARIZERS, "    unit = normal / length.clamp(min=1e-6)", "    unit = normal", "normal_smoothness", LIFT_TESTS),
    (REGULARIZERS, "    length = normal.norm(dim=1, keepdim=True)", "    length = normal.norm(dim=0, keepdim=True)",
     "normal_smoothness", LIFT_TESTS),
    ("dreamdistill/instant/trainer.py", "return_normals=config.regularizers.needs_normals,",
     "return_normals=config.regularizers.orientation > 0,", "composite_normals_when_weighted", "tests/test_instant.py"),
    (REGULARIZERS, "ramp_weight(config.normal_smoothness, config.normal_smoothness_from, progress)",
     "config.normal_smoothness", "normal_smoothness", LIFT_TESTS),
    (REGULARIZERS, "(down * weight[..., 1:, :] * weight[..., :-1, :]).sum())",
     "(down * weight[..., 1:, :] * weight[..., 1:, :]).sum())", "normal_smoothness", LIFT_TESTS),
    (LIFTER, "return_distortion=config.regularizers.distortion > 0,", "return_distortion=True,",
     "asked_for_exactly_when_weighted", STEP_TESTS),
    (LIFTER, "return_eikonal=config.regularizers.eikonal > 0)", "return_eikonal=config.regularizers.eikonal >= 0)",
     "asked_for_exactly_when_weighted", STEP_TESTS),
    (LIFTER, "list(self.field.mlp.parameters()) + list(self.background.parameters())",
     "list(self.field.mlp.parameters())", "scheduled_learning_rate", STEP_TESTS),
    (LIFTER, 'finite = int(result.get("nonfinite", 0)) == 0 and self.gradients_finite(loss)',
     "finite = self.gradients_finite(loss)", "nonfinite_step", STEP_TESTS),
    (LIFTER, 'finite = int(result.get("nonfinite", 0)) == 0 and self.gradients_finite(loss)',
     'finite = int(result.get("nonfinite", 0)) == 0', "nonfinite_step", STEP_TESTS),
    (LIFTER, "            self.optimizer.step()\n        else:", "            pass\n        else:",
     "scheduled_learning_rate", STEP_TESTS),
    (SCHEDULES, "    return final_factor**progress", "    return final_factor", "scheduled_learning_rate",
     STEP_TESTS),
    (SCHEDULES, "and progress < config.resolution_switch:", "and progress <= config.resolution_switch:",
     "resolution_and_active_levels", STEP_TESTS),
    (SCHEDULES, "    if progress < config.albedo_warmup:", "    if progress <= config.albedo_warmup:",
     "shading_follows", STEP_TESTS),
    (SCHEDULES, "min(progress / scene.levels_full_at, 1.0)", "min(progress, 1.0)", "resolution_and_active_levels",
     STEP_TESTS),
    # the tiny encoder of a latent teacher (tests/test_tiny_encoder.py)
    (TINY, 'targets = latents["latents"].float() * scale', 'targets = latents["latents"].float()',
     "test_stage_regresses", TINY_TESTS),
    (TINY, "index = torch.randint(0, count,", "index = torch.randint(0, images.shape[0],", "test_stage_regresses",
     TINY_TESTS),
    (TINY, "return resize(images.float() / 255, input_size)", "return resize(images.float(), input_size)",
     "test_stage_regresses", TINY_TESTS),
    (SDS, "self.teacher.images_to_model(images, self.config.encoder)", "self.teacher.images_to_model(images)",
     "test_sds_encodes", TINY_TESTS),
    ("dreamdistill/diffusion/teacher.py", "self.codec.encode(images.to(self.device), self.dtype, encoder)",
     "self.codec.encode(images.to(self.device), self.dtype)", "test_teacher_encodes or test_sds_encodes", TINY_TESTS),
]


def main() -> int:
    missed = 0
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a killed run still restores the file it broke
    chosen = [m for m in MUTATIONS if only in m[0] or only in ''.join(m[4:]) or only in ''.join(m[1])]
    for name, old, new, tests, *where in chosen:
        test_file = where[0] if where else "tests/test_wiring.py"
        path = ROOT / name
        source = path.read_text()
        olds, news = (old, new) if isinstance(old, tuple) else ((old,), (new,))
        stale = next((part for part in olds if source.count(part) != 1), None)
        if stale is not None:
            print(f"STALE  {name}: {stale!r} is not in the file once; update this table")
            missed += 1
            continue
        broken = source
        for part, replacement in zip(olds, news):
            broken = broken.replace(part, replacement)
        path.write_text(broken)
        try:
            result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", test_file, "-k", tests],
                                    cwd=ROOT, capture_output=True, text=True)
        finally:
            path.write_text(source)
        if result.returncode == 5:  # pytest's "no tests collected": a -k that matches nothing catches nothing
            print(f"NO TESTS {test_file} -k {tests!r}; update this table")
            missed += 1
            continue
        caught = result.returncode != 0
        missed += not caught
        broken_text = " / ".join(part.strip() for part in news if part.strip())
        print(f"{'CAUGHT' if caught else 'MISSED'} {name}: {broken_text[:70]!r}", flush=True)
    tried = len(chosen)
    print(f"{tried - missed} of {tried} mutations caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
