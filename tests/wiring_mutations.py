"""Break the training-step wiring by hand, one mutation at a time, and check that tests/test_wiring.py fails.

    python tests/wiring_mutations.py [WORD]   # CAUGHT / MISSED per mutation (only files containing WORD)

Each row: (file, exact original text, broken text, the -k expression of the tests that must catch it[, the test
file, default tests/test_wiring.py]).
Every file is restored after its run. Not part of the suite (it reruns pytest once per mutation, a few minutes).
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDS, VSD = "dreamdistill/guidance/sds.py", "dreamdistill/guidance/vsd.py"
FIELD, VOLUME, LIFTER = "dreamdistill/scene/field.py", "dreamdistill/render/volume.py", "dreamdistill/lift3d/lifter.py"
SDF_TESTS, LIFT_TESTS = "tests/test_sdf.py", "tests/test_lift3d.py"
MUTATIONS = [
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
    ("dreamdistill/distill/sid.py", '(fake, "cfg")(x_t, t, text, fake_cfg).x0', '(fake, "cfg")(x_t, t, text).x0',
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
]


def main() -> int:
    missed = 0
    only = sys.argv[1] if len(sys.argv) > 1 else ""
    for name, old, new, tests, *where in (m for m in MUTATIONS if only in m[0]):
        test_file = where[0] if where else "tests/test_wiring.py"
        path = ROOT / name
        source = path.read_text()
        if source.count(old) != 1:
            print(f"STALE  {name}: {old!r} is not in the file once; update this table")
            missed += 1
            continue
        path.write_text(source.replace(old, new))
        try:
            result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", test_file, "-k", tests],
                                    cwd=ROOT, capture_output=True, text=True)
        finally:
            path.write_text(source)
        caught = result.returncode != 0
        missed += not caught
        print(f"{'CAUGHT' if caught else 'MISSED'} {name}: {new.strip()[:70]!r}", flush=True)
    tried = sum(only in m[0] for m in MUTATIONS)
    print(f"{tried - missed} of {tried} mutations caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
