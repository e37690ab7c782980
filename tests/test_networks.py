import threading

import keras
from keras import layers
import numpy as np
import pytest
import tensorflow as tf

from config import BENCH, Config
import cyclegan
import inference
import networks


@pytest.mark.parametrize("size", [64, 128, 256])
def test_generator_keeps_the_image_shape(size):
    generator = networks.build_generator(4, 1, "transpose", 0.02)
    image = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype("float32")
    output = generator.predict_on_batch(image)
    assert output.shape == (2, size, size, 3)
    assert np.all(np.abs(output) <= 1.0)


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_generator_runs_on_non_square_images(upsample):
    generator = networks.build_generator(4, 1, upsample, 0.02)
    output = generator.predict_on_batch(np.zeros((1, 48, 100, 3), "float32"))
    assert output.shape == (1, 48, 100, 3)


def test_generator_follows_the_books_and_the_papers_tables():
    book = networks.build_generator(BENCH["S"].ngf, BENCH["S"].n_res_blocks, "transpose", 0.02)
    assert book.get_layer("c7s1_conv").filters == 32
    assert sum(layer.name.endswith("_add") for layer in book.layers) == 6
    assert book.get_layer("down2_conv").filters == 128
    paper = networks.build_generator(Config().ngf, Config().n_res_blocks, "transpose", 0.02)
    assert paper.get_layer("c7s1_conv").filters == 64
    assert sum(layer.name.endswith("_add") for layer in paper.layers) == 9
    norms = [layer for layer in book.layers if isinstance(layer, networks.InstanceNormalization)]
    assert len(norms) == 3 + 2 * 6 + 2


def test_unet_keeps_the_image_shape_and_concatenates_each_level_with_its_mirror():
    """At 256 x 512 the eight levels halve the image down to 1 x 2; each up level's output is joined to
    the down path's output of the level above it (skip first, as the reference's torch.cat([x, ...]))."""
    ngf = 4
    unet = networks.build_unet_generator(ngf, 0.02)
    image = np.random.default_rng(0).uniform(-1, 1, (1, 256, 512, 3)).astype("float32")
    output = unet.predict_on_batch(image)
    assert output.shape == (1, 256, 512, 3) and np.all(np.abs(output) <= 1.0)
    down = [f"down{level}_norm" if 1 < level < 8 else f"down{level}_conv" for level in range(1, 9)]
    skips = [f"up{level}_skip" for level in range(8, 1, -1)]
    probe = keras.Model(unet.input, [unet.get_layer(name).output for name in down + skips])
    activations = dict(zip(down + skips, probe.predict_on_batch(image)))
    for level, multiple in enumerate(networks.UNET_FILTERS, 1):
        assert activations[down[level - 1]].shape == (1, 256 >> level, 512 >> level, ngf * multiple)
    for level in range(8, 1, -1):
        skip, joined = activations[down[level - 2]], activations[f"up{level}_skip"]
        assert joined.shape == skip.shape[:3] + (2 * skip.shape[3],)
        np.testing.assert_array_equal(joined[..., :skip.shape[3]], skip)  # exact: the join copies the tensor


def test_unet_follows_the_references_unet_256():
    unet = networks.build_unet_generator(64, 0.02)
    convs = [layer for layer in unet.layers if isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose))]
    assert [c.name for c in convs] == [f"down{i}_conv" for i in range(1, 9)] + [f"up{i}_conv" for i in range(8, 0, -1)]
    assert [c.filters for c in convs] == [64, 128, 256, 512, 512, 512, 512, 512, 512, 512, 512, 512, 256, 128, 64, 3]
    assert all(c.kernel_size == (4, 4) and c.strides == (2, 2) for c in convs)
    assert [c.name for c in convs if c.use_bias] == ["up1_conv"]
    assert [layer.name for layer in unet.layers if isinstance(layer, networks.InstanceNormalization)] == (
        [f"down{i}_norm" for i in range(2, 8)] + [f"up{i}_norm" for i in range(8, 1, -1)])
    assert [layer.name for layer in unet.layers if isinstance(layer, layers.Dropout)] == [
        "up7_dropout", "up6_dropout", "up5_dropout"]
    assert all(layer.rate == 0.5 for layer in unet.layers if isinstance(layer, layers.Dropout))
    assert [layer.name for layer in unet.layers if isinstance(layer, layers.LeakyReLU)] == [
        f"down{i}_lrelu" for i in range(2, 9)]
    # The reference's unet_256 with an affine norm (a gamma and a beta for each of the 4,928 channels of
    # its 13 norms, none on the 1 x 1 bottleneck) and, as the tutorial's, a bias on the last conv only.
    norms = sum(layer.count_params() for layer in unet.layers if isinstance(layer, networks.InstanceNormalization))
    assert norms == 2 * 4_928
    assert unet.count_params() == 54_413_955


def test_unet_translates_any_size_padded_to_its_multiple_and_drops_out_only_in_training():
    unet = networks.build_unet_generator(4, 0.02)
    assert inference.size_rule(unet) == (256, 256)
    assert inference.size_rule(networks.build_generator(4, 1, "transpose", 0.02)) == (4, 8)
    image = np.random.default_rng(1).uniform(-1, 1, (40, 300, 3)).astype("float32")
    padded, size = inference.pad_to_multiple(image, *inference.size_rule(unet))
    assert padded.shape == (256, 512, 3) and size == (40, 300)
    translated = inference.translate_images(unet, [image, image])
    assert [t.shape for t in translated] == [(40, 300, 3)] * 2
    # Equal images translate equally only to float32 rounding: a batch of one and the two positions of a
    # batch of two sum in orders the CPU's kernels pick (on an AVX2-only AMD Zen 3 the two positions
    # differ by 1.2e-7, a batch of one from a batch of two by 2.5e-7 with oneDNN held to AVX2). 1e-5 is
    # 40 times that, on tanh outputs of about 0.05 to 0.5, and far below what dropout changes (0.1 or more).
    rounding = 1e-5
    expected = unet.predict_on_batch(padded[None])[0, :40, :300]
    np.testing.assert_allclose(translated[0], expected, rtol=0, atol=rounding)
    np.testing.assert_allclose(translated[1], translated[0], rtol=0, atol=rounding)  # inference: no dropout
    training = [np.asarray(unet(padded[None], training=True))[0, :40, :300] for _ in range(2)]
    assert np.abs(training[0] - training[1]).max() > 1000 * rounding  # new dropout masks on every call
    assert np.abs(training[0] - expected).max() > 1000 * rounding


def test_unet_survives_keras_save_and_safe_load(tmp_path):
    unet = networks.build_unet_generator(4, 0.02, name="generator_ab")
    path = str(tmp_path / "unet.keras")
    unet.save(path)
    loaded = inference.load_generator(path)
    image = np.random.default_rng(2).uniform(-1, 1, (1, 256, 256, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(image), unet.predict_on_batch(image), atol=1e-6)
    assert inference.size_rule(loaded) == (256, 256)


@pytest.mark.parametrize("netg", ["resnet", "unet"])
def test_the_memory_check_counts_the_weights_of_the_configured_networks(netg):
    """cyclegan.weight_count (train.py's memory check) extends counts of small networks: it is the
    count of the networks the config builds."""
    config = Config(ngf=8, ndf=8, n_res_blocks=2, netg=netg)
    gan = cyclegan.CycleGAN(config)
    assert cyclegan.weight_count(config) == sum(model.count_params() for model in gan.models.values())


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


@pytest.mark.parametrize("netd, size, grid", [("book", 64, 3), ("book", 128, 7), ("book", 256, 15),
                                             ("patch70", 64, 6), ("patch70", 256, 30)])
def test_discriminator_patch_grid_is_read_from_the_model(netd, size, grid):
    discriminator = networks.build_discriminator(4, netd, False, 0.02)
    assert networks.patch_shape(discriminator, size, size) == (grid, grid, 1)
    output = discriminator.predict_on_batch(np.zeros((1, size, size, 3), "float32"))
    assert output.shape == (1, grid, grid, 1)


@pytest.mark.parametrize("netd, strides", [("book", [2, 2, 2, 2, 1]), ("patch70", [2, 2, 2, 1, 1])])
def test_discriminator_layout_and_output_activation(netd, strides):
    discriminator = networks.build_discriminator(8, netd, False, 0.02)
    convs = [layer for layer in discriminator.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 16, 32, 64, 1]
    assert [c.strides for c in convs] == [(s, s) for s in strides]
    assert all(c.kernel_size == (4, 4) and c.padding == "valid" for c in convs)
    assert [layer.name for layer in discriminator.layers if "norm" in layer.name] == [
        "conv2_norm", "conv3_norm", "conv4_norm"]
    image = np.random.default_rng(1).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    scores = networks.build_discriminator(8, netd, True, 0.02).predict_on_batch(image)
    assert np.all((scores > 0) & (scores < 1))
    linear = discriminator.predict_on_batch(image * 50)
    assert linear.min() < 0 or linear.max() > 1


def test_the_paper_discriminator_has_the_references_parameter_count():
    # NLayerDiscriminator(3, 64, n_layers=3, InstanceNorm2d): 2,764,737 weights and biases; our
    # instance norms add a gamma and a beta per channel of conv2..conv4 (2 * (128 + 256 + 512)).
    assert networks.build_discriminator(64, "patch70", False, 0.02).count_params() == 2_764_737 + 2 * 896


@pytest.mark.parametrize("gain", [0.02, 0.1])
def test_conv_weights_start_from_the_references_normal_with_zero_biases(gain):
    keras.utils.set_random_seed(0)
    nets = [networks.build_generator(8, 2, "transpose", gain), networks.build_discriminator(8, "patch70", False, gain)]
    convs = [layer for net in nets for layer in net.layers if isinstance(layer, layers.Conv2D)]
    kernels = np.concatenate([np.ravel(conv.kernel.numpy()) for conv in convs])
    assert abs(kernels.mean()) < 0.1 * gain and kernels.std() == pytest.approx(gain, rel=0.05)
    assert np.abs(kernels).max() > 3 * gain  # a normal's tails, not a truncated or uniform draw
    assert all(not np.any(conv.bias.numpy()) for conv in convs)
    same_shape = {}  # each layer its own draw, as the reference's init_weights: no two kernels alike
    for conv in convs:
        same_shape.setdefault(tuple(conv.kernel.shape), []).append(conv.kernel.numpy())
    for shape, drawn in same_shape.items():
        for index, kernel in enumerate(drawn):
            assert not any(np.array_equal(kernel, other) for other in drawn[index + 1:]), shape


def test_init_gain_zero_is_keras_glorot_uniform():
    keras.utils.set_random_seed(0)
    generator = networks.build_generator(8, 1, "transpose", 0.0)
    kernel = generator.get_layer("res1_a_conv").kernel.numpy()
    limit = np.sqrt(6 / (9 * 32 + 9 * 32))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit


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


def test_instance_norm_normalises_each_sample_and_channel_like_group_norm():
    x = np.random.default_rng(0).normal(2.0, 3.0, (3, 10, 6, 5)).astype(np.float32)
    gamma, beta = np.linspace(0.5, 2.0, 5, dtype=np.float32), np.linspace(-1.0, 1.0, 5, dtype=np.float32)
    norm = networks.InstanceNormalization(name="norm")
    group = layers.GroupNormalization(groups=-1, epsilon=1e-5)
    for layer in (norm, group):
        layer.build(x.shape)
        layer.set_weights([gamma, beta])
    expected = (x - x.mean((1, 2), keepdims=True)) / np.sqrt(x.var((1, 2), keepdims=True) + 1e-5) * gamma + beta
    np.testing.assert_allclose(np.asarray(norm(x)), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm(x)), np.asarray(group(x)), atol=1e-5)


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


def test_down_and_up_convolutions_pad_symmetrically_like_the_reference():
    """PaddedConv2D is ZeroPadding2D(1) then a valid convolution (PyTorch's Conv2d(padding=1));
    UpConv2D is the full transposed convolution without its first row and column, at kernel 3 (PyTorch's
    ConvTranspose2d(padding=1, output_padding=1), the residual generator's) or without its first and last
    ones, at kernel 4 (ConvTranspose2d(padding=1), the U-Net's)."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 10, 14, 5)).astype(np.float32)
    padded = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    pairs = [(networks.PaddedConv2D(7, 3, pad=1, strides=2), layers.Conv2D(7, 3, strides=2, padding="valid"),
              lambda y: y, padded),
             (networks.PaddedConv2D(7, 4, pad=1, strides=2), layers.Conv2D(7, 4, strides=2, padding="valid"),
              lambda y: y, padded),
             (networks.UpConv2D(4, 3), layers.Conv2DTranspose(4, 3, strides=2, padding="valid"),
              lambda y: y[:, 1:, 1:], x),
             (networks.UpConv2D(4, 4), layers.Conv2DTranspose(4, 4, strides=2, padding="valid"),
              lambda y: y[:, 1:-1, 1:-1], x)]
    for ours, reference, crop, reference_input in pairs:
        ours.build(x.shape)
        reference.build(reference_input.shape)
        weights = [rng.normal(size=w.shape).astype(np.float32) for w in reference.weights]
        ours.set_weights(weights)
        reference.set_weights(weights)
        expected = crop(np.asarray(reference(reference_input)))
        assert tuple(ours.compute_output_shape(x.shape)) == expected.shape
        np.testing.assert_allclose(np.asarray(ours(x)), expected, atol=1e-4)
    assert networks.UpConv2D(4, 3)(x).shape == networks.UpConv2D(4, 4)(x).shape == (2, 20, 28, 4)


def test_generator_with_instance_norm_survives_keras_save_and_safe_load(tmp_path):
    generator = networks.build_generator(4, 1, "transpose", 0.02, name="g")
    path = str(tmp_path / "g.keras")
    generator.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    image = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(image)), np.asarray(generator(image)), atol=1e-6)


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
