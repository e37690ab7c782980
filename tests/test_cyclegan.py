"""cyclegan.py's pieces that need no networks: the history pool and the learning-rate schedule (the
model and its step are tried in tests/test_networks.py); and runs with the generator and loss options."""
import json
import math

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import tensorflow as tf

import checkpoints
import cli
from config import from_command_line
import cyclegan
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
    a real train.py process ends so on a refusal from the same place in test_reliability.py's
    test_real_processes_end_bad_input_without_a_traceback."""
    with pytest.raises(SystemExit) as ended:
        cli.run_cli(lambda: train.main(["--dataroot", dataset, "--netg", "unet", "--image-size", "128"]), "train.py")
    assert ended.value.code == (
        "train.py: error: --image-size 128: --netg unet takes multiples of 256 (its eight stride-2 downsamplings "
        "end at 1 x 1 there)")


def test_a_checkpoint_restores_the_unets_dropout_states(tmp_path):
    from config import Config
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
