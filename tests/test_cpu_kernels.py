"""cpu_kernels.py: one switch puts the kernels in networks.KERNELS where they apply, and each computes,
forward and backward, what networks.py's plain Keras path computes, to float32 rounding, on whatever CPU
runs the tests. Tests that pin op types expect the plain path's where the kernels are not in use (a
GPU visible, or CYCLEGAN_CPU_KERNELS=off)."""
import json
import zipfile

import keras
from keras import layers
import numpy as np
import pytest
import tensorflow as tf

from cli import UsageError
import cpu_kernels
import networks


def graph_ops(fn, *args):
    """The op types of fn traced on args."""
    return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


def value_and_gradients(fn, x, weights, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return [y, *tape.gradient(y, [x, *weights], upstream)]


def test_one_switch_fills_and_clears_the_networks_hooks(monkeypatch):
    monkeypatch.delenv("CYCLEGAN_CPU_KERNELS", raising=False)
    on_cpu = not tf.config.list_physical_devices("GPU")
    assert cpu_kernels.use(True) == (tuple(cpu_kernels.KERNEL_HOOKS) if on_cpu else ())
    assert set(networks.KERNELS) == ({"padded_conv", "up_conv", "instance_norm", "adam_update"} if on_cpu else set())
    assert cpu_kernels.use(False) == () and networks.KERNELS == {}
    for value in ("off", "0", " OFF "):
        monkeypatch.setenv("CYCLEGAN_CPU_KERNELS", value)
        assert cpu_kernels.use(True) == () and networks.KERNELS == {}
    monkeypatch.setenv("CYCLEGAN_CPU_KERNELS", "fused_adam, winograd")
    assert cpu_kernels.use(True) == (("winograd", "fused_adam") if on_cpu else ())
    assert set(networks.KERNELS) == ({"padded_conv", "adam_update"} if on_cpu else set())
    monkeypatch.setenv("CYCLEGAN_CPU_KERNELS", "winograd,fast")
    with pytest.raises(UsageError, match="no kernel fast"):
        cpu_kernels.use(True)
    assert cpu_kernels.use(False) == ()  # off needs no valid list


@pytest.mark.parametrize("kernel", [3, 4])
def test_up_conv_has_the_gradients_of_the_cut_full_transposed_convolution(kernel):
    """UpConv2D with the kernels on (flipped, with gradients that flip its input again instead of keeping
    a flipped copy) has the values and gradients TensorFlow derives for the full transposed convolution
    cut like the reference's, also where the graph does not know the image size."""
    in_use = cpu_kernels.use(True)
    rng = np.random.default_rng(kernel)
    layer = networks.UpConv2D(4, kernel)
    x = tf.constant(rng.normal(size=(2, 5, 7, 6)).astype(np.float32))
    layer.build(x.shape)
    layer.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in layer.weights])
    upstream = tf.constant(rng.normal(size=(2, 10, 14, 4)).astype(np.float32))

    def full_then_cut(x):
        full = tf.nn.conv2d_transpose(x, layer.kernel, [2, 8 + kernel, 12 + kernel, 4], 2, "VALID")
        return full[:, 1:11, 1:15] + layer.bias

    weights = [layer.kernel, layer.bias]
    expected = value_and_gradients(full_then_cut, x, weights, upstream)
    unknown_size = tf.function(lambda x: value_and_gradients(layer, x, weights, upstream),
                               input_signature=[tf.TensorSpec([None, None, None, 6])])
    for ours in (value_and_gradients(layer, x, weights, upstream), unknown_size(x)):
        for got, want in zip(ours, expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert ("ReverseV2" in graph_ops(layer, x)) == ("flipped_up_conv" in in_use)


@pytest.mark.parametrize("pad, reflect, stride, kernel, inputs, channels", [
    (1, True, 1, 3, 8, 8), (3, True, 1, 7, 4, 4), (1, False, 2, 3, 8, 8), (1, False, 2, 4, 6, 6),
    (1, True, 1, 3, 256, 256), (3, True, 1, 7, 16, 3), (3, True, 1, 7, 3, 16), (2, False, 1, 5, 8, 1)])
@pytest.mark.parametrize("again", [False, True])
def test_padded_conv_has_the_gradients_of_padding_then_convolving(monkeypatch, pad, reflect, stride, kernel,
                                                                   inputs, channels, again):
    """PaddedConv2D with the kernels on (padding again for the gradients above PADDED_AGAIN_BYTES,
    Winograd's F(2x2, 3x3) at 3x3, space-to-depth for few channels in or out) has the values and
    gradients TensorFlow derives for a padding then a 'valid' convolution; a padded input is padded a
    second time exactly when it is that large."""
    monkeypatch.setattr(cpu_kernels, "PADDED_AGAIN_BYTES", 1 if again else 2 ** 40)
    in_use = cpu_kernels.use(True)
    rng = np.random.default_rng(kernel + channels + stride)
    layer = networks.PaddedConv2D(channels, kernel, pad=pad, reflect=reflect, strides=stride)
    x = tf.constant(rng.normal(size=(2, 11, 9, inputs)).astype(np.float32))
    layer.build(x.shape)
    layer.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in layer.weights])
    paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    mode = "REFLECT" if reflect else "CONSTANT"
    expected_fn = lambda x: tf.nn.conv2d(tf.pad(x, paddings, mode), layer.kernel, stride, "VALID") + layer.bias
    upstream = tf.constant(rng.normal(size=layer.compute_output_shape(x.shape)).astype(np.float32))
    weights = [layer.kernel, layer.bias]
    for ours, want in zip(value_and_gradients(layer, x, weights, upstream),
                          value_and_gradients(expected_fn, x, weights, upstream)):
        np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-4)
    graph = tf.function(lambda: value_and_gradients(layer, x, weights, upstream)).get_concrete_function().graph
    padded_shape = (11 + 2 * pad, 9 + 2 * pad)
    pads = [op for op in graph.get_operations()
            if op.type in ("Pad", "PadV2", "MirrorPad", "ConcatV2") and tuple(op.outputs[0].shape[1:3]) == padded_shape]
    winograd = "winograd" in in_use and stride == 1 and kernel == 3 and min(inputs, channels) > cpu_kernels.FEW_CHANNELS
    padded_again = again and "padded_again" in in_use and not (winograd and reflect)
    assert len(pads) == (0 if winograd and reflect else 1 + padded_again)  # Winograd's gather reads the mirror image
    kinds = {op.type for op in graph.get_operations()}
    assert ("BatchMatMulV2" in kinds) == winograd
    few_channels = stride == 1 and kernel % 2 == 1 and min(inputs, channels) <= cpu_kernels.FEW_CHANNELS
    assert ("SpaceToDepth" in kinds) == ("space_to_depth" in in_use and few_channels)


@pytest.mark.parametrize("known", [True, False])
@pytest.mark.parametrize("pad", [0, 1, 2])
@pytest.mark.parametrize("height, width", [(8, 6), (7, 6), (6, 9), (5, 7)])
def test_winograd_reads_the_mirror_image_from_the_input(height, width, pad, known):
    """winograd_conv3x3 of x mirror-padded in its tiles' gather, and both its gradients, are tf.pad
    (REFLECT) then a valid convolution's, for even and odd sizes, known to the graph or not."""
    rng = np.random.default_rng(height * width + pad)
    x = tf.constant(rng.normal(size=(2, height, width, 5)).astype(np.float32))
    kernel = tf.constant(rng.normal(size=(3, 3, 5, 6)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(2, height + 2 * pad - 2, width + 2 * pad - 2, 6)).astype(np.float32))
    spec = [tf.TensorSpec(t.shape if known else [None, None, None, t.shape[3]]) for t in (x, upstream)]
    ours = tf.function(lambda x, upstream: (cpu_kernels.winograd_conv3x3(x, kernel, pad),
                                            *cpu_kernels.winograd_conv3x3_gradients(x, upstream, kernel, pad)),
                       input_signature=spec)
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        expected = tf.nn.conv2d(tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], "REFLECT"), kernel, 1, "VALID")
    for got, want in zip(ours(x, upstream), [expected, *tape.gradient(expected, [x, kernel], upstream)]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kernel, channels, kernel_name, path", [
    (3, 256, "winograd", "BatchMatMulV2"), (3, 16, "winograd", "BatchMatMulV2"), (5, 16, None, "Conv2D")])
def test_unpadded_conv_runs_by_winograd_with_the_same_values(kernel, channels, kernel_name, path):
    """A float32 3x3 kernel runs by Winograd's F(2x2, 3x3), another odd one as a plain convolution:
    outputs and both gradients are a valid convolution's."""
    in_use = cpu_kernels.use(True)
    rng = np.random.default_rng(kernel + channels)
    layer = networks.PaddedConv2D(channels, kernel, pad=0)
    x = tf.constant(rng.normal(size=(2, 5 + kernel, 4 + kernel, channels)).astype(np.float32))
    layer.build(x.shape)
    layer.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in layer.weights])
    expected_path = path if kernel_name in in_use else "Conv2D"
    assert graph_ops(layer, x) & {"BatchMatMulV2", "Conv2D"} == {expected_path}
    upstream = tf.constant(rng.normal(size=(2, 6, 5, channels)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = layer(x)
        expected = tf.nn.conv2d(x, layer.kernel, 1, "VALID") + layer.bias
    assert ours.shape == expected.shape == (2, 6, 5, channels)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(tape.gradient(ours, [x, layer.kernel], upstream),
                         tape.gradient(expected, [x, layer.kernel], upstream)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_instance_norm_of_one_image_takes_the_fused_kernel_with_the_same_values_and_gradients():
    """With the kernels on, a batch of one runs TensorFlow's fused batch-norm kernel; output and
    gradients (input, gamma, beta) are GroupNormalization(groups=-1)'s; a batch of two the moments."""
    in_use = cpu_kernels.use(True)
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(1.0, 2.0, (1, 12, 9, 6)).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(1, 12, 9, 6)).astype(np.float32))
    weights = [np.linspace(0.5, 2.0, 6, dtype=np.float32), np.linspace(-1.0, 1.0, 6, dtype=np.float32)]
    norm, group = networks.InstanceNormalization(name="norm"), layers.GroupNormalization(groups=-1, epsilon=1e-5)
    results = []
    for layer in (norm, group):
        layer.build(x.shape)
        layer.set_weights(weights)
        results.append(value_and_gradients(layer, x, layer.trainable_weights, upstream))
    assert ("FusedBatchNormV3" in graph_ops(norm, x)) == ("fused_instance_norm" in in_use)
    assert "FusedBatchNormV3" not in graph_ops(norm, tf.concat([x, x], 0))
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("amsgrad", [False, True])
def test_fused_adam_takes_the_same_steps_as_keras_adam_and_is_saved_as_it(amsgrad):
    """networks.adam with the kernels on updates each variable by one ResourceApplyAdam (amsgrad: Keras'
    own update), as Keras' Adam does, and its config is Keras' Adam's."""
    in_use = cpu_kernels.use(True)
    rng = np.random.default_rng(6)
    start = rng.normal(size=(4, 3)).astype(np.float32)
    gradients = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(5)]
    finals, applied = [], []
    for optimizer in (keras.optimizers.Adam(2e-4, beta_1=0.5), networks.adam(2e-4, 0.5)):
        optimizer.amsgrad = amsgrad
        variable = keras.Variable(start)
        optimizer.build([variable])
        step = lambda gradient: optimizer.apply_gradients([(gradient, variable)])
        applied.append("ResourceApplyAdam" in graph_ops(step, tf.constant(gradients[0])))
        apply = tf.function(step)
        for gradient in gradients:
            apply(tf.constant(gradient))
        finals.append(variable.numpy())
    assert applied == [False, "fused_adam" in in_use and not amsgrad]
    assert np.abs(finals[0] - start).max() > 5e-4
    np.testing.assert_allclose(finals[1], finals[0], rtol=1e-6, atol=1e-7)
    assert type(networks.adam(2e-4, 0.5)) is keras.optimizers.Adam
    assert keras.optimizers.serialize(networks.adam(2e-4, 0.5))["class_name"] == "Adam"


def test_each_kernel_hands_16_bits_back_to_the_plain_path():
    """In bfloat16 (and float16) the kernels compute networks.py's plain functions: none of their own ops."""
    cpu_kernels.use(True)
    rng = np.random.default_rng(7)
    for dtype in (tf.bfloat16, tf.float16):
        x = tf.constant(rng.normal(size=(1, 6, 6, 8)), dtype)
        conv_kernel, up_kernel = (tf.constant(rng.normal(0, 0.1, shape), dtype) for shape in ((3, 3, 8, 8), (3, 3, 4, 8)))
        gamma, beta = tf.ones([8]), tf.zeros([8])
        cases = [(cpu_kernels.padded_conv, networks.padded_conv, (x, conv_kernel, 1, True, 1)),
                 (cpu_kernels.flipped_up_conv, networks.up_conv, (x, up_kernel)),
                 (cpu_kernels.fused_instance_norm, networks.instance_norm, (x, gamma, beta, 1e-5))]
        for kernel, plain, args in cases:
            assert graph_ops(lambda: kernel(*args)) == graph_ops(lambda: plain(*args)), kernel.__name__
            np.testing.assert_array_equal(np.asarray(kernel(*args), np.float32),  # exact: the same ops
                                          np.asarray(plain(*args), np.float32))


def test_a_generator_saved_with_the_kernels_on_loads_on_the_plain_path_and_computes_the_same(tmp_path):
    """Nothing of the kernels is saved: the same .keras config with them on and off, and the file loaded
    on the plain path computes what the generator computed with them on, to float32 rounding."""
    in_use = cpu_kernels.use(True)
    generator = networks.build_generator(8, 1, "transpose", 0.02, name="g")
    image = np.random.default_rng(8).uniform(-1, 1, (1, 32, 24, 3)).astype(np.float32)
    with_kernels = np.asarray(generator(image))
    generator.save(tmp_path / "on.keras")
    cpu_kernels.use(False)
    generator.save(tmp_path / "off.keras")
    configs = [json.loads(zipfile.ZipFile(tmp_path / name).read("config.json")) for name in ("on.keras", "off.keras")]
    assert configs[0] == configs[1]
    assert not any(name in json.dumps(configs[0]) for name in in_use)
    loaded = keras.saving.load_model(tmp_path / "on.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(image)), with_kernels, rtol=0, atol=1e-5)
