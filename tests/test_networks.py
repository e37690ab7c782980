"""networks.py: the generators and discriminators as the paper's and the reference's tables give them
(shapes, layouts, parameter counts, initialisation, padding, instance norm), and saved and loaded safely."""
import keras
from keras import layers
import numpy as np
import pytest

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
