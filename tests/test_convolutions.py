"""convolutions.py: the rearranged convolutions compute, forward and backward, what TensorFlow's plain
padding and convolution ops compute, to float32 rounding."""
import numpy as np
import pytest
import tensorflow as tf

import convolutions
import networks


@pytest.mark.parametrize("kernel", [3, 4])
def test_up_conv_has_the_gradients_of_the_cut_full_transposed_convolution(kernel):
    """UpConv2D's own float32 gradients (flipping its input again instead of keeping a flipped copy) are
    those TensorFlow derives for the full transposed convolution cut like the reference's, also where the
    graph does not know the image size."""
    rng = np.random.default_rng(kernel)
    layer = networks.UpConv2D(4, kernel)
    x = tf.constant(rng.normal(size=(2, 5, 7, 6)).astype(np.float32))
    layer.build(x.shape)
    layer.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in layer.weights])
    upstream = tf.constant(rng.normal(size=(2, 10, 14, 4)).astype(np.float32))

    def full_then_cut(x):
        full = tf.nn.conv2d_transpose(x, layer.kernel, [2, 8 + kernel, 12 + kernel, 4], 2, "VALID")
        return full[:, 1:11, 1:15] + layer.bias

    def value_and_gradients(fn, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return [y, *tape.gradient(y, [x, layer.kernel, layer.bias], upstream)]

    expected = value_and_gradients(full_then_cut, x)
    unknown_size = tf.function(lambda x: value_and_gradients(layer, x),
                               input_signature=[tf.TensorSpec([None, None, None, 6])])
    for ours in (value_and_gradients(layer, x), unknown_size(x)):
        for got, want in zip(ours, expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pad, reflect, stride, kernel, inputs, channels", [
    (1, True, 1, 3, 8, 8), (3, True, 1, 7, 4, 4), (1, False, 2, 3, 8, 8), (1, False, 2, 4, 6, 6),
    (1, True, 1, 3, 256, 256), (3, True, 1, 7, 16, 3), (3, True, 1, 7, 3, 16), (2, False, 1, 5, 8, 1)])
@pytest.mark.parametrize("again", [False, True])
def test_padded_conv_has_the_gradients_of_padding_then_convolving(monkeypatch, pad, reflect, stride, kernel,
                                                                   inputs, channels, again):
    """PaddedConv2D's own gradients (padding again for them above PADDED_AGAIN_BYTES), and its forward
    passes and gradients rearranged (Winograd's F(2x2, 3x3) at 3x3, space-to-depth for few channels in or
    out) are those TensorFlow derives for a padding then a 'valid' convolution; a padded input is padded
    a second time exactly when it is that large."""
    monkeypatch.setattr(convolutions, "PADDED_AGAIN_BYTES", 1 if again else 2 ** 40)
    rng = np.random.default_rng(kernel + channels + stride)
    layer = networks.PaddedConv2D(channels, kernel, pad=pad, reflect=reflect, strides=stride)
    x = tf.constant(rng.normal(size=(2, 11, 9, inputs)).astype(np.float32))
    layer.build(x.shape)
    layer.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in layer.weights])
    paddings = [[0, 0], [pad, pad], [pad, pad], [0, 0]]
    mode = "REFLECT" if reflect else "CONSTANT"
    expected_fn = lambda x: tf.nn.conv2d(tf.pad(x, paddings, mode), layer.kernel, stride, "VALID") + layer.bias
    upstream = tf.constant(rng.normal(size=layer.compute_output_shape(x.shape)).astype(np.float32))

    def value_and_gradients(fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return [y, *tape.gradient(y, [x, layer.kernel, layer.bias], upstream)]

    for ours, want in zip(value_and_gradients(layer), value_and_gradients(expected_fn)):
        np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-4)
    graph = tf.function(lambda: value_and_gradients(layer)).get_concrete_function().graph
    padded_shape = (11 + 2 * pad, 9 + 2 * pad)
    pads = [op for op in graph.get_operations()
            if op.type in ("Pad", "PadV2", "MirrorPad", "ConcatV2") and tuple(op.outputs[0].shape[1:3]) == padded_shape]
    winograd = stride == 1 and kernel == 3 and min(inputs, channels) > convolutions.FEW_CHANNELS
    assert len(pads) == (0 if winograd and reflect else 1 + again)  # Winograd's gather reads the mirror image
    kinds = {op.type for op in graph.get_operations()}
    assert ("BatchMatMulV2" in kinds) == winograd
    assert ("SpaceToDepth" in kinds) == (stride == 1 and kernel % 2 == 1 and min(inputs, channels) <= 4)


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
    ours = tf.function(lambda x, upstream: (convolutions.winograd_conv3x3(x, kernel, pad),
                                            *convolutions.winograd_conv3x3_gradients(x, upstream, kernel, pad)),
                       input_signature=spec)
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        expected = tf.nn.conv2d(tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], "REFLECT"), kernel, 1, "VALID")
    for got, want in zip(ours(x, upstream), [expected, *tape.gradient(expected, [x, kernel], upstream)]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kernel, channels, path", [(3, 256, "BatchMatMulV2"), (3, 16, "BatchMatMulV2"),
                                                     (7, 128, "Conv2DBackpropInput"), (5, 16, "Conv2D")])
def test_valid_conv_runs_by_winograd_or_backward_data_with_the_same_values(kernel, channels, path):
    """ValidConv2D runs a float32 3x3 kernel by Winograd's F(2x2, 3x3), another odd one above
    BLOCKED_KERNEL_BYTES through TensorFlow's backward-data convolution, a smaller one as a plain
    convolution: outputs and both gradients are a valid convolution's."""
    rng = np.random.default_rng(kernel + channels)
    layer = networks.ValidConv2D(channels, kernel)
    x = tf.constant(rng.normal(size=(2, 5 + kernel, 4 + kernel, channels)).astype(np.float32))
    layer.build(x.shape)
    layer.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in layer.weights])
    ops = {op.type for op in tf.function(layer).get_concrete_function(x).graph.get_operations()}
    assert ops & {"BatchMatMulV2", "Conv2DBackpropInput", "Conv2D"} == {path}
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
