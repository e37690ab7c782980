"""cyclegan.py: the history pool and the learning-rate schedule; the losses, the combined model and its
step (each network frozen where it must be, proven by weight snapshots); runs with the generator and loss
options. The networks themselves are tests/test_networks.py's."""
import json
import math
import threading

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import tensorflow as tf

import checkpoints
import cli
from config import Config, from_command_line
import cyclegan
import networks
import train

from conftest import TINY


def test_history_pool_fills_then_swaps_about_half():
    rng = np.random.default_rng(0)
    pool = cyclegan.HistoryPool(3, rng)
    first = np.arange(3, dtype=np.float32).reshape(3, 1)
    np.testing.assert_array_equal(pool.query(first), first)
    assert len(pool.images) == 3
    returned_old = 0
    for value in range(100, 400):
        out = pool.query(np.array([[value]], np.float32))
        returned_old += int(out[0, 0] != value)
        assert len(pool.images) == 3
    assert 100 < returned_old < 200
    passthrough = cyclegan.HistoryPool(0, rng)
    assert passthrough.query(first) is first and passthrough.images == []


def test_learning_rate_is_constant_then_decays_linearly_to_zero():
    rates = [cyclegan.learning_rate_at(e, 2e-4, 100, 100) for e in range(200)]
    assert rates[:100] == [2e-4] * 100
    assert np.isclose(rates[100], 2e-4 * 100 / 101)
    assert np.allclose(np.diff(rates[99:]), -2e-4 / 101)
    assert 0 < rates[-1] < 2e-4 / 100


@pytest.mark.slow
def test_a_vanilla_gan_run_trains_and_resumes_with_the_vanilla_loss(dataset, tmp_path):
    run = ["--runs-root", str(tmp_path), "--name", "vanilla"]
    train.main(["--dataroot", dataset, *run, *TINY, "--gan-mode", "vanilla", "--max-steps", "2"])
    config, resume = from_command_line([*run, "--resume", "--max-steps", "4"])
    assert resume and config.gan_mode == "vanilla"
    assert train.train(config, resume, verbose=0)["step"] == 4
    run_dir = tmp_path / "vanilla"
    assert json.loads((run_dir / "config.json").read_text())["gan_mode"] == "vanilla"
    assert checkpoints.checkpoint_paths(str(run_dir))[-1].endswith("step-000000004.npz")
    accumulator = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    for tag in ("loss/D_A", "loss/D_B", "loss/adversarial_a", "loss/adversarial_b"):
        events = accumulator.Tensors(tag)
        assert sorted(e.step for e in events) == [1, 2, 3, 4]
        assert all(math.isfinite(float(tf.make_ndarray(e.tensor_proto))) for e in events)
    gan = cyclegan.CycleGAN(config)  # what the resumed run trained: cross-entropy of logits everywhere
    losses = [gan.discriminator_a.loss, gan.discriminator_b.loss] + gan.combined.loss[:2]
    assert all(isinstance(loss, keras.losses.BinaryCrossentropy) and loss.get_config()["from_logits"]
               for loss in losses)


def test_unet_with_an_image_size_not_a_multiple_of_256_is_one_line(dataset):
    """train.py's own ending (run_cli's SystemExit: exit status 1, the message as its one stderr line, no
    traceback), here in-process: the refusal comes from reading the command line, before any network;
    a real train.py process ends so on a refusal from the same place in test_bad_input.py's
    test_real_processes_end_bad_input_without_a_traceback."""
    with pytest.raises(SystemExit) as ended:
        cli.run_cli(lambda: train.main(["--dataroot", dataset, "--netg", "unet", "--image-size", "128"]), "train.py")
    assert ended.value.code == (
        "train.py: error: --image-size 128: --netg unet takes multiples of 256 (its eight stride-2 downsamplings "
        "end at 1 x 1 there)")


def test_a_checkpoint_restores_the_unets_dropout_states(tmp_path):
    config = Config(netg="unet", image_size=256, ngf=2, ndf=2)
    gan, other = cyclegan.CycleGAN(config), cyclegan.CycleGAN(config)
    image = np.zeros((1, 256, 256, 3), np.float32)
    for _ in range(3):
        gan.generator_ab(image, training=True)  # each dropout draw advances its layer's random state
    states = {name: [np.asarray(s) for s in checkpoints.dropout_states(model)] for name, model in gan.models.items()}
    assert len(states["generator_ab"]) == 3 and states["discriminator_a"] == []
    pools = {d: cyclegan.HistoryPool(0, None) for d in "AB"}
    path = checkpoints.save_checkpoint(str(tmp_path), gan, 1, 0, pools, np.random.default_rng(0))
    assert not np.array_equal(np.asarray(checkpoints.dropout_states(other.generator_ab)[0]),
                              states["generator_ab"][0])
    checkpoints.load_checkpoint(path, other, pools, np.random.default_rng(1))
    for name, model in other.models.items():
        assert [np.asarray(s).tolist() for s in checkpoints.dropout_states(model)] == [
            s.tolist() for s in states[name]]
    first, again = (np.asarray(model.generator_ab(image + 0.5, training=True)) for model in (gan, other))
    np.testing.assert_array_equal(first, again)  # the same dropout masks from here on


# ---- the losses and the training step ------------------------------------------------------------

def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("gan_mode", ["lsgan", "vanilla"])
def test_discriminator_loss_is_the_mean_of_the_real_and_fake_halves(gan_mode):
    """lsgan: squared distance of the scores from 1 (real) and 0 (fake); vanilla: binary cross-entropy
    of the scores taken as logits, the reference's BCEWithLogitsLoss."""
    keras.utils.set_random_seed(0)
    discriminator = networks.build_discriminator(8, "patch70", False, 0.5)
    networks.compile_discriminator(discriminator, 2e-4, 0.5, gan_mode)
    rng = np.random.default_rng(9)
    real, fake = (rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32") for _ in "rf")
    scores = [discriminator.predict_on_batch(images).astype(np.float64) for images in (real, fake)]
    assert scores[0].std() > 0.5  # logits far from 0, where the two losses differ most
    if gan_mode == "lsgan":
        expected = 0.5 * (np.mean((scores[0] - 1) ** 2) + np.mean(scores[1] ** 2))
    else:
        expected = 0.5 * (np.mean(-log_sigmoid(scores[0])) + np.mean(-log_sigmoid(-scores[1])))
    patch = networks.patch_shape(discriminator, 32, 32)
    loss = cyclegan.train_discriminator(discriminator, real, fake, patch)
    assert loss == pytest.approx(expected, rel=1e-4)


def test_vanilla_adversarial_terms_are_the_cross_entropy_of_the_discriminators_logits():
    gan = cyclegan.CycleGAN(Config(image_size=32, ngf=4, ndf=8, n_res_blocks=1, gan_mode="vanilla", init_gain=0.5))
    rng = np.random.default_rng(10)
    real_a, real_b = (rng.uniform(-1, 1, (2, 32, 32, 3)).astype("float32") for _ in "ab")
    scores = {"adversarial_a": gan.discriminator_a.predict_on_batch(gan.generator_ba.predict_on_batch(real_b)),
              "adversarial_b": gan.discriminator_b.predict_on_batch(gan.generator_ab.predict_on_batch(real_a))}
    logs = gan.combined.test_on_batch([real_a, real_b], networks.combined_targets(real_a, real_b, gan.patch),
                                      return_dict=True)
    for name, score in scores.items():
        assert score.std() > 0.5
        assert logs[f"{name}_loss"] == pytest.approx(np.mean(-log_sigmoid(score.astype(np.float64))), rel=1e-4)


def snapshot(gan):
    return {name: [w.copy() for w in model.get_weights()] for name, model in gan.models.items()}


def changed(before, after):
    return {name for name in before
            if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name]))}


def assert_changes_only(gan, step, expected):
    before = snapshot(gan)
    step()
    assert changed(before, snapshot(gan)) == expected


def first_steps(gan, size):
    """Discriminator A's first step, then the combined model's first step: each traces its train function,
    A's before the combined model that holds it frozen is traced. Returns two images and what happened:
    the networks each step moved; for the combined step, the variables made while it was traced, its logs,
    and the cycle and identity losses of the model's own outputs for the images just before it."""
    rng = np.random.default_rng(3)
    real_a, real_b = (rng.uniform(-1, 1, (1, size, size, 3)).astype("float32") for _ in range(2))
    targets = networks.combined_targets(real_a, real_b, gan.patch)
    before = snapshot(gan)
    cyclegan.train_discriminator(gan.discriminator_a, real_a, real_b, gan.patch)
    first = {"discriminator_a moved": changed(before, snapshot(gan)), "made": []}
    first["expected"] = [float(np.mean(np.abs(output - target)))
                         for output, target in zip(gan.combined([real_a, real_b])[2:6], targets[2:6])]

    def creator(next_creator, **kwargs):
        first["made"].append(kwargs.get("name"))
        return next_creator(**kwargs)

    before = snapshot(gan)
    with tf.variable_creator_scope(creator):
        first["logs"] = gan.combined.train_on_batch([real_a, real_b], targets, return_dict=True)
    first["combined moved"] = changed(before, snapshot(gan))
    return (real_a, real_b), first


@pytest.fixture(scope="module")
def stepped_gan():
    """A tiny CycleGAN after its first steps (first_steps), shared by the tests below that step it: tracing
    the combined model's train function costs seconds. They assert what a step changes, not where the
    weights are, and put back what else they change."""
    gan = cyclegan.CycleGAN(Config(image_size=32, ngf=4, ndf=8, n_res_blocks=1))
    images, first = first_steps(gan, 32)
    return gan, images, first


@pytest.mark.parametrize("netg, size", [("resnet", 32), pytest.param("unet", 256, marks=pytest.mark.slow)])
def test_freezing_really_works_in_keras_3(request, netg, size):
    """Each discriminator's step moves only itself; the combined step moves both generators only: on the
    first call of each, which traces its train function (discriminator A before the combined model, B
    after), and on later calls, which reuse them."""
    if netg == "resnet":
        gan, (real_a, real_b), first = request.getfixturevalue("stepped_gan")
    else:
        gan = cyclegan.CycleGAN(Config(image_size=size, ngf=4, ndf=8, n_res_blocks=1, netg=netg))
        (real_a, real_b), first = first_steps(gan, size)
    step_a = lambda: cyclegan.train_discriminator(gan.discriminator_a, real_a, real_b, gan.patch)
    step_b = lambda: cyclegan.train_discriminator(gan.discriminator_b, real_b, real_a, gan.patch)
    step_combined = lambda: gan.combined.train_on_batch(
        [real_a, real_b], networks.combined_targets(real_a, real_b, gan.patch))

    assert first["discriminator_a moved"] == {"discriminator_a"}
    assert first["combined moved"] == {"generator_ab", "generator_ba"}
    assert_changes_only(gan, step_b, {"discriminator_b"})  # its first step
    assert_changes_only(gan, step_a, {"discriminator_a"})  # each again, with its traced train function
    assert_changes_only(gan, step_combined, {"generator_ab", "generator_ba"})
    assert_changes_only(gan, step_b, {"discriminator_b"})
    rng = np.random.default_rng(3)
    pools = cyclegan.HistoryPool(50, rng), cyclegan.HistoryPool(50, rng)
    assert_changes_only(gan, lambda: gan.train_step(real_a, real_b, *pools), set(gan.models))


def test_the_discriminator_steps_run_side_by_side_and_train_as_one_after_the_other(stepped_gan):
    """train_step runs the two discriminator steps in two threads at once: each in a thread of its
    own, and the same losses and weights, to the bit, as the same step with the two in turn."""
    gan = stepped_gan[0]
    rng = np.random.default_rng(5)
    real_a, real_b = (rng.uniform(-1, 1, (1, 32, 32, 3)).astype("float32") for _ in range(2))
    pools = cyclegan.HistoryPool(0, rng), cyclegan.HistoryPool(0, rng)
    optimizer_variables = [v for optimizer in gan.optimizers.values() for v in optimizer.variables]
    start = snapshot(gan), [v.numpy() for v in optimizer_variables]
    threads = []
    original, side_by_side_executor = cyclegan.train_discriminator, gan.side_by_side
    assert side_by_side_executor is not None
    # Each step waits here until the other has begun too: the two at once. (Else a step of this tiny GAN
    # could end before the other is handed over, and the pool's idle thread would take that one as well.)
    both_begun = threading.Barrier(2, timeout=60)

    def recording(*args):
        threads.append(threading.current_thread())
        both_begun.wait()
        return original(*args)

    cyclegan.train_discriminator = recording
    try:
        side_by_side = gan.train_step(real_a, real_b, *pools), snapshot(gan)
    finally:
        cyclegan.train_discriminator = original
    assert len(threads) == 2 and threading.main_thread() not in threads and threads[0] is not threads[1]
    for name, weights in start[0].items():
        gan.models[name].set_weights(weights)
    for variable, value in zip(optimizer_variables, start[1]):
        variable.assign(value)
    gan.side_by_side = None
    try:
        in_turn = gan.train_step(real_a, real_b, *pools), snapshot(gan)
    finally:
        gan.side_by_side = side_by_side_executor
    # Exact: one machine running the same traced steps on the same inputs; only the calling threads differ.
    assert side_by_side[0] == in_turn[0]
    assert changed(side_by_side[1], in_turn[1]) == set()
    assert changed(start[0], in_turn[1]) == set(gan.models)


def test_combined_model_outputs_losses_and_weights(stepped_gan):
    gan = stepped_gan[0]
    assert (Config().lambda_cycle, Config().lambda_identity) == (10.0, 0.5)  # the shared GAN's, the defaults
    assert list(gan.combined.output_names) == list(networks.LOSS_TERMS + networks.TRANSLATIONS)
    optimizers = list(gan.optimizers.values())
    assert len({id(o) for o in optimizers}) == 3
    for optimizer in optimizers:
        assert np.isclose(float(optimizer.learning_rate), 2e-4)
        assert np.isclose(float(optimizer.beta_1), 0.5)
    rng = np.random.default_rng(4)
    real_a, real_b = (rng.uniform(-1, 1, (1, 32, 32, 3)).astype("float32") for _ in range(2))
    logs = gan.combined.test_on_batch([real_a, real_b], networks.combined_targets(real_a, real_b, gan.patch),
                                      return_dict=True)
    weights = dict(zip(networks.LOSS_TERMS, [1, 1, 10, 10, 5, 5]))
    assert np.isclose(logs["loss"], sum(weights[n] * logs[f"{n}_loss"] for n in networks.LOSS_TERMS), rtol=1e-5)

    fake_b = gan.generator_ab.predict_on_batch(real_a)
    fake_a = gan.generator_ba.predict_on_batch(real_b)
    expected = {
        "adversarial_a": np.mean((gan.discriminator_a.predict_on_batch(fake_a) - 1) ** 2),
        "cycle_a": np.mean(np.abs(gan.generator_ba.predict_on_batch(fake_b) - real_a)),
        "identity_b": np.mean(np.abs(gan.generator_ab.predict_on_batch(real_b) - real_b)),
    }
    for name, value in expected.items():
        assert np.isclose(logs[f"{name}_loss"], value, rtol=1e-4), name


def test_discriminators_train_on_the_translations_of_the_generators_step(stepped_gan):
    """The reference's order: the combined (generators') step first, then each discriminator on the
    translations that step made, before its update, with no second translation."""
    gan = stepped_gan[0]
    rng = np.random.default_rng(7)
    real_a, real_b = (rng.uniform(-1, 1, (1, 32, 32, 3)).astype("float32") for _ in range(2))
    before = {"fake_b": gan.generator_ab.predict_on_batch(real_a), "fake_a": gan.generator_ba.predict_on_batch(real_b)}
    generator_steps = int(gan.combined.optimizer.iterations)
    seen = {}
    original = cyclegan.train_discriminator

    def recording(discriminator, real, fake, patch):
        seen[discriminator.name] = np.array(fake)
        seen[f"{discriminator.name} after generator steps"] = int(gan.combined.optimizer.iterations) - generator_steps
        return original(discriminator, real, fake, patch)

    cyclegan.train_discriminator = recording
    try:
        gan.train_step(real_a, real_b, cyclegan.HistoryPool(0, rng), cyclegan.HistoryPool(0, rng))
    finally:
        cyclegan.train_discriminator = original
    assert seen["discriminator_a after generator steps"] == seen["discriminator_b after generator steps"] == 1
    np.testing.assert_allclose(seen["discriminator_a"], before["fake_a"], atol=1e-5)
    np.testing.assert_allclose(seen["discriminator_b"], before["fake_b"], atol=1e-5)
    assert not np.allclose(gan.generator_ab.predict_on_batch(real_a), before["fake_b"], atol=1e-7)


def test_combined_train_function_makes_no_variables_when_traced(stepped_gan):
    """build_combined makes Keras' per-term loss trackers itself: a variable made while the train function
    is traced (Keras would make them there) makes tf.function trace the whole step twice and keep both
    graphs. Watched in the first combined step of the shared GAN (first_steps), which traced it; the
    logged losses are the step's own."""
    first = stepped_gan[2]
    assert first["made"] == [], first["made"]
    np.testing.assert_allclose([first["logs"][f"{term}_loss"] for term in networks.LOSS_TERMS[2:]], first["expected"],
                               rtol=1e-5)


@pytest.mark.slow
def test_without_its_own_loss_trackers_the_combined_train_function_makes_variables_when_traced(monkeypatch):
    """The check above can fail: with build_loss_trackers a no-op, Keras makes the trackers while the
    train function is traced. The logged losses are the step's own here too."""
    monkeypatch.setattr(networks, "build_loss_trackers", lambda combined: None)
    # No residual block: the generators' size does not matter here, and each pass of theirs costs tracing time.
    g_ab, g_ba = (networks.build_generator(4, 0, "transpose", 0.02, name=n) for n in ("g_ab", "g_ba"))
    d_a, d_b = (networks.build_discriminator(8, "patch70", False, 0.02, name=n) for n in ("d_a", "d_b"))
    combined = networks.build_combined(g_ab, g_ba, d_a, d_b, 10.0, 0.5, 2e-4, 0.5, "lsgan")
    rng = np.random.default_rng(4)
    a, b = (rng.uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32) for _ in "ab")
    targets = networks.combined_targets(a, b, networks.patch_shape(d_a, 32, 32))
    expected = [float(np.mean(np.abs(output - target))) for output, target in zip(combined([a, b])[2:6], targets[2:6])]
    made = []

    def creator(next_creator, **kwargs):
        made.append(kwargs.get("name"))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(creator):
        logs = combined.train_on_batch([a, b], targets, return_dict=True)
    assert made != []
    np.testing.assert_allclose([logs[f"{term}_loss"] for term in networks.LOSS_TERMS[2:]], expected, rtol=1e-5)


def test_combined_outputs_equal_the_separate_passes_it_batches(stepped_gan):
    gan = stepped_gan[0]
    g_ab, g_ba, d_a, d_b = gan.generator_ab, gan.generator_ba, gan.discriminator_a, gan.discriminator_b
    rng = np.random.default_rng(2)
    a, b = (rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32) for _ in "ab")
    expected = [d_a(g_ba(b)), d_b(g_ab(a)), g_ba(g_ab(a)), g_ab(g_ba(b)), g_ba(a), g_ab(b), g_ba(b), g_ab(a)]
    outputs = gan.combined([a, b])
    assert len(outputs) == 8
    for output, value in zip(outputs, expected):
        np.testing.assert_allclose(np.asarray(output), np.asarray(value), atol=1e-5)
    assert gan.combined.output_names == ["adversarial_a", "adversarial_b", "cycle_a", "cycle_b",
                                         "identity_a", "identity_b", "fake_a", "fake_b"]
