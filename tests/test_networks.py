import keras
import numpy as np
from keras import layers

import networks


def test_instance_norm_normalises_each_sample_and_channel_like_group_norm():
    x = np.random.default_rng(0).normal(2.0, 3.0, (3, 10, 6, 5)).astype(np.float32)
    gamma, beta = np.linspace(0.5, 2.0, 5, dtype=np.float32), np.linspace(-1.0, 1.0, 5, dtype=np.float32)
    norm = networks.instance_norm("norm")
    group = layers.GroupNormalization(groups=-1, epsilon=1e-5)
    for layer in (norm, group):
        layer.build(x.shape)
        layer.set_weights([gamma, beta])
    expected = (x - x.mean((1, 2), keepdims=True)) / np.sqrt(x.var((1, 2), keepdims=True) + 1e-5) * gamma + beta
    np.testing.assert_allclose(np.asarray(norm(x)), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(norm(x)), np.asarray(group(x)), atol=1e-5)


def test_generator_with_instance_norm_survives_keras_save_and_safe_load(tmp_path):
    generator = networks.build_generator(ngf=4, n_res_blocks=1, name="g")
    path = str(tmp_path / "g.keras")
    generator.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    image = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(loaded(image)), np.asarray(generator(image)), atol=1e-6)


def test_combined_outputs_equal_the_separate_passes_it_batches():
    g_ab, g_ba = (networks.build_generator(ngf=4, n_res_blocks=1, name=n) for n in ("g_ab", "g_ba"))
    d_a, d_b = (networks.build_discriminator(ndf=8, name=n) for n in ("d_a", "d_b"))
    combined = networks.build_combined(g_ab, g_ba, d_a, d_b)
    rng = np.random.default_rng(2)
    a, b = (rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32) for _ in "ab")
    expected = [d_a(g_ba(b)), d_b(g_ab(a)), g_ba(g_ab(a)), g_ab(g_ba(b)), g_ba(a), g_ab(b)]
    outputs = combined([a, b])
    assert len(outputs) == 6
    for output, value in zip(outputs, expected):
        np.testing.assert_allclose(np.asarray(output), np.asarray(value), atol=1e-5)
    assert combined.output_names == ["adversarial_a", "adversarial_b", "cycle_a", "cycle_b",
                                     "identity_a", "identity_b"]
