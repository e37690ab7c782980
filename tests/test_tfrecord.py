"""TFRecord domains in Kaggle's "I'm Something of a Painter Myself" schema (each record a tf.train.Example
with the JPEG under `image`, plus `image_name` and `target`), in the CycleGAN layout and in two folders
named by --train-a/--train-b."""
import glob
import json
import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow as tf

import cli
import data
import evaluate
import generate
import train
from config import Config

from conftest import TINY, runs_slow_tests, smooth_image, write_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNDECODABLE, NO_IMAGE = "undecodable", "no image"


def kaggle_record(image_bytes, name, target):
    features = {"image_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
                "target": tf.train.Feature(bytes_list=tf.train.BytesList(value=[target.encode()]))}
    if image_bytes is not None:
        features["image"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def write_shards(folder, images, per_shard, corrupt=None, target="monet", extension=".jpg"):
    """Kaggle-like shards of `images` (uint8 arrays), `per_shard` records each; `corrupt` maps (shard,
    index) to UNDECODABLE or NO_IMAGE: a record inserted there in place of a good one."""
    os.makedirs(folder, exist_ok=True)
    corrupt, images = corrupt or {}, iter(images)
    for shard, count in enumerate(per_shard):
        with tf.io.TFRecordWriter(os.path.join(folder, f"{target}{shard:02d}-{count}.tfrec")) as writer:
            for index in range(count):
                kind = corrupt.get((shard, index))
                encoded = {UNDECODABLE: b"\xff\xd8\xff\xe0 not a JPEG", NO_IMAGE: None}.get(kind) if kind else \
                    iio.imwrite("<bytes>", next(images), extension=extension)
                writer.write(kaggle_record(encoded, f"{target}{shard}{index}", target))
    return str(folder)


def smooth_images(count, seed, size=(40, 40)):
    rng = np.random.default_rng(seed)
    return [smooth_image(rng, *size) for _ in range(count)]


def flat_images(values):
    return [np.full((36, 36, 3), value, np.uint8) for value in values]


def values_of(batch):
    return int(round((float(batch[0, 0, 0, 0]) + 1) * 127.5))


# ---- reading shards --------------------------------------------------------------------------

def test_shards_are_counted_once_and_corrupt_records_skipped_with_a_warning(tmp_path, caplog):
    images = smooth_images(4, seed=0)
    folder = write_shards(tmp_path / "monet_tfrec", images, (3, 3), {(0, 1): UNDECODABLE, (1, 2): NO_IMAGE})
    with caplog.at_level(logging.INFO, logger="cyclegan"):
        records = data.domain_images(folder, "image")
        again = data.domain_images(folder, "image")
    shards = sorted(glob.glob(os.path.join(folder, "*.tfrec")))
    assert len(records) == len(again) == 4 and records.shards == tuple(shards)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"skipping {shards[0]} record 1: not a readable image"),
        ("WARNING", f"skipping {shards[1]} record 2: no image bytes under the feature 'image'; their features: "
                    "image_name, target (--tfrecord-key)"),
        ("INFO", f"{folder}: 4 images in 2 TFRecord shards")]  # the second call counts nothing again
    loaded = data.load_images(records, 32)
    expected = np.stack([data.preprocess_test(data.decode_image(iio.imwrite("<bytes>", i, extension=".jpg")), 32)
                         for i in images])
    np.testing.assert_allclose(loaded, expected, atol=1e-6)
    np.testing.assert_allclose(data.load_images(records, 32, count=2), expected[:2], atol=1e-6)


def test_another_tfrecord_key_and_a_cut_shard(tmp_path, caplog):
    """--tfrecord-key names the feature; a shard cut short is read up to the cut, with a warning."""
    folder = write_shards(tmp_path / "photos", smooth_images(5, seed=1), (2, 3))
    assert len(data.domain_images(folder, "image")) == 5
    with caplog.at_level(logging.WARNING, logger="cyclegan"), pytest.raises(cli.UsageError) as error:
        data.domain_images(folder, "picture")
    assert str(error.value) == (f"{folder}: no readable images: no image bytes under the feature 'picture' in 5 "
                                "records; their features: image, image_name, target (--tfrecord-key image?)")
    assert caplog.text == ""  # the one line says it all
    last = sorted(glob.glob(os.path.join(folder, "*.tfrec")))[-1]
    with open(last, "r+b") as f:
        f.truncate(os.path.getsize(last) - 10)
    with caplog.at_level(logging.WARNING, logger="cyclegan"):
        records = data.domain_images(folder, "image")
    assert len(records) == 4 and f"skipping the rest of {last} from record 2: cut short or damaged" in caplog.text
    assert len(list(data.train_dataset((records, records), 32, 1, seed=0)[0].take(9))) == 9


def test_records_without_the_key_are_one_warning_naming_the_features_they_have(tmp_path, caplog):
    """Not one per record: a Kaggle-like domain whose images are under `img`, read with the default key."""
    folder = tmp_path / "photo_tfrec"
    os.makedirs(folder)
    images = iter(smooth_images(6, seed=3))
    for shard in range(2):
        with tf.io.TFRecordWriter(str(folder / f"photo{shard}.tfrec")) as writer:
            for index in range(3):
                image = iio.imwrite("<bytes>", next(images), extension=".jpg")
                key = "image" if (shard, index) == (1, 2) else "img"  # one record the default key reads
                writer.write(tf.train.Example(features=tf.train.Features(feature={
                    key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[index]))})).SerializeToString())
    with caplog.at_level(logging.WARNING, logger="cyclegan"):
        assert len(data.domain_images(str(folder), "image")) == 1
    assert [record.getMessage() for record in caplog.records] == [
        f"skipping 5 records in {folder} (the first: {folder / 'photo0.tfrec'} record 0): no image bytes under the "
        "feature 'image'; their features: img, label (--tfrecord-key img?)"]
    assert len(data.domain_images(str(folder), "img")) == 5


def test_record_epochs_hold_every_good_record_once_are_seeded_and_resume_mid_epoch(tmp_path):
    """Domain A in shards, B in image files; each image one flat colour, so a batch tells which it was."""
    values = [20 * (i + 1) for i in range(6)]
    write_shards(tmp_path / "a", flat_images(values), (4, 3), {(1, 0): UNDECODABLE}, extension=".png")
    for index, image in enumerate(flat_images(values[:4])):
        os.makedirs(tmp_path / "b", exist_ok=True)
        iio.imwrite(tmp_path / "b" / f"{index}.png", image)
    folders = data.domain_folders(Config(train_a=str(tmp_path / "a"), train_b=str(tmp_path / "b")))
    images = data.train_images(folders)

    def stream(seed, count=18, start_step=0):
        dataset, steps_per_epoch = data.train_dataset(images, 32, 1, seed=seed, start_step=start_step)
        assert steps_per_epoch == 6
        return [(values_of(a), values_of(b)) for a, b in dataset.take(count)]

    first = stream(3)
    orders = [a for a, _ in first]
    epochs = [orders[i:i + 6] for i in range(0, 18, 6)]
    assert all(sorted(epoch) == values for epoch in epochs), "every good record once per epoch"
    assert len({tuple(epoch) for epoch in epochs}) > 1, "reshuffled between epochs"
    assert stream(3) == first and stream(4) != first
    assert stream(3, count=8, start_step=10) == first[10:], "a resumed run sees what the uninterrupted one saw"


def test_mixed_empty_and_shard_folders_give_one_line(tmp_path):
    mixed = write_shards(tmp_path / "mixed", smooth_images(1, seed=2), (1,))
    write_images(mixed, 1)
    broken = write_shards(tmp_path / "broken", [], (2,), {(0, 0): UNDECODABLE, (0, 1): NO_IMAGE})
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    folders = data.domain_folders(Config(train_a=mixed, train_b=str(tmp_path / "empty")))
    expected = f"--train-a: expected a folder of {data.CONTENT}"
    for call, message in (
            (lambda: folders.images("train", "A"), f"{mixed}: holds both image files and TFRecord shards, expected "
                                                   f"one kind ({expected})"),
            (lambda: folders.images("train", "B"), f"{tmp_path / 'empty'}: holds no images (--train-b: "
                                                   f"expected a folder of {data.CONTENT})"),
            (lambda: data.domain_images(broken, "image"), f"{broken}: no readable images"),
            (lambda: data.list_images(broken), f"{broken}: holds TFRecord shards (monet00-2.tfrec), expected a "
                                               "folder of .jpg/.png/.bmp images")):
        with pytest.raises(cli.UsageError) as error:
            call()
        assert str(error.value).startswith(message) and "\n" not in str(error.value)


# ---- train.py, evaluate.py and generate.py on shards ---------------------------------------------

def kaggle_domains(root):
    """monet_tfrec/ (3 good records in 2 shards, one corrupt) and photo_tfrec/ (2 good records)."""
    monet = write_shards(os.path.join(root, "monet_tfrec"), smooth_images(3, seed=3), (2, 2), {(0, 1): UNDECODABLE})
    photo = write_shards(os.path.join(root, "photo_tfrec"), smooth_images(2, seed=4), (1, 1), target="photo")
    return monet, photo


@pytest.fixture(scope="module", autouse=True)
def two_folder_process(request, tmp_path_factory):
    """train.py on Kaggle's two folders, no --dataroot, in its own process: with no InceptionV3 weights to
    be had (an empty Keras cache, no network), which only a process started so can be sure of. Started
    with the module, it trains beside the tests in this process."""
    if not runs_slow_tests(request, __name__):  # the quick tier: no test here needs it
        yield None
        return
    tmp_path = tmp_path_factory.mktemp("kaggle")
    monet, photo = kaggle_domains(tmp_path / "input")
    (tmp_path / "keras_home").mkdir()
    env = dict(os.environ, KERAS_HOME=str(tmp_path / "keras_home"), https_proxy="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9")
    command = [sys.executable, "train.py", "--runs-root", str(tmp_path / "runs"), "--name", "run", *TINY,
               "--seed", "0", "--print-every", "1", "--train-a", photo, "--train-b", monet, "--max-steps", "3",
               "--eval-every", "1"]
    with open(tmp_path / "stdout", "w") as stdout, open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout, stderr=stderr)
    yield process, tmp_path, monet, photo
    if process.poll() is None:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_train_in_the_cyclegan_layout_from_shards(tmp_path, capsys, caplog):
    """trainA/ trainB/ testA/ testB/ all shards: an epoch is the larger domain's good records (3 here).
    In this process (no evaluation here); the two-folder run's process trains meanwhile."""
    root = tmp_path / "data"
    root.mkdir()
    for split in ("train", "test"):
        monet, photo = kaggle_domains(tmp_path / split)
        os.rename(monet, root / f"{split}A")
        os.rename(photo, root / f"{split}B")
    caplog.set_level(logging.INFO, logger="cyclegan")
    train.main(["--dataroot", str(root), "--runs-root", str(tmp_path / "runs"), "--name", "run", *TINY,
                "--seed", "0", "--print-every", "1", "--epochs", "1", "--epochs-decay", "0"])
    run_dir = str(tmp_path / "runs" / "run")
    stdout = capsys.readouterr().out
    progress = [line.split("  ")[:2] for line in stdout.splitlines() if line.startswith("step ")]
    assert progress == [["step 1/3", "epoch 1/1"], ["step 2/3", "epoch 1/1"], ["step 3/3", "epoch 1/1"]]
    bad = sorted(glob.glob(str(root / "trainA" / "*.tfrec")))[0]
    logged = [(logging.getLevelName(level), message) for _, level, message in caplog.record_tuples]
    assert ("WARNING", f"skipping {bad} record 1: not a readable image") in logged
    assert ("INFO", f"{root / 'trainA'}: 3 images in 2 TFRecord shards") in logged
    assert ("INFO", f"{root / 'trainB'}: 2 images in 2 TFRecord shards") in logged
    assert ("INFO", f"{root / 'testA'}: 3 images in 2 TFRecord shards") in logged
    assert not [message for _, message in logged if "read the training folder" in message]
    assert sorted(os.listdir(os.path.join(run_dir, "checkpoints")))[-1].endswith("step-000000003.npz")
    grid = iio.imread(os.path.join(run_dir, "samples", "BtoA_step0000003.png"))
    assert grid.shape[:2] == (2 * 250, 3 * 250)  # testB's 2 good records


@pytest.fixture(scope="module")
def two_folder_run(two_folder_process):
    """Kaggle's two folders, no --dataroot: samples and evaluation from the training folders."""
    process, tmp_path, monet, photo = two_folder_process
    assert process.wait(timeout=600) == 0, (tmp_path / "stderr").read_text()[-3000:]
    result = SimpleNamespace(stdout=(tmp_path / "stdout").read_text(), stderr=(tmp_path / "stderr").read_text())
    return result, str(tmp_path / "runs" / "run"), monet, photo


@pytest.mark.slow
def test_train_from_two_shard_folders_samples_and_evaluates_them(two_folder_run):
    result, run_dir, monet, photo = two_folder_run
    assert [line.split("  ")[:2] for line in result.stdout.splitlines() if line.startswith("step 3/")] == \
        [["step 3/3", "epoch 1/200"]]
    lines = result.stderr.splitlines()
    assert f"INFO: no test folder for domain A: sample grids and evaluation read the training folder {photo}" in lines
    assert f"INFO: no test folder for domain B: sample grids and evaluation read the training folder {monet}" in lines
    assert len([line for line in lines if "3 images in 2 TFRecord shards" in line]) == 1  # counted once
    assert "scoring on the training folder" not in result.stdout  # said once, by the INFO lines above
    assert "eval at step 3: AtoB domain" in result.stdout
    assert os.path.isfile(os.path.join(os.path.dirname(monet), "domain_classifier_64px_photo_tfrec_monet_tfrec.keras"))
    tags = set()
    for path in glob.glob(os.path.join(run_dir, "events.out.tfevents.*")):
        tags |= {value.tag for event in tf.compat.v1.train.summary_iterator(path) for value in event.summary.value}
    assert {"eval/domain_AtoB", "eval/domain_fd_BtoA", "samples/AtoB"} <= tags
    grid = iio.imread(os.path.join(run_dir, "samples", "BtoA_step0000003.png"))
    assert grid.shape[:2] == (3 * 250, 3 * 250)  # monet's 3 good records
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert (config["dataroot"], config["train_a"], config["train_b"]) == (None, photo, monet)


def tiny_features(images):
    """A deterministic stand-in for InceptionV3: 4x4 area-averaged colours."""
    return tf.image.resize(images, (4, 4), method="area").numpy().reshape(len(images), -1)


@pytest.mark.slow
def test_evaluate_scores_a_two_folder_run_on_its_shards(two_folder_run, tmp_path):
    _, run_dir, monet, photo = two_folder_run
    test_b = write_shards(tmp_path / "monet_test", smooth_images(2, seed=5), (2,))
    args = evaluate.build_parser().parse_args(["--run-dir", run_dir, "--test-b", test_b])
    results = evaluate.evaluate(args, extract_features=tiny_features)
    assert results["AtoB"]["images"] == 2 and results["AtoB"]["target_images"] == 2  # photo's 2 records, the 2 here
    assert results["BtoA"]["images"] == 2 and results["BtoA"]["target_images"] == 2
    assert np.isfinite(results["AtoB"]["fid"]) and 0 <= results["BtoA"]["domain"] <= 1
    report = json.load(open(os.path.join(run_dir, "evaluation.json")))
    assert (report["test_a"], report["test_b"]) == (photo, test_b)


@pytest.mark.slow
def test_generate_defaults_to_the_runs_test_folder_and_refuses_shards_in_one_line(two_folder_run):
    _, run_dir, monet, photo = two_folder_run
    assert generate.run_files(run_dir, "AtoB")["input"] == photo
    assert generate.run_files(run_dir, "BtoA")["input"] == monet
    with pytest.raises(cli.UsageError) as error:
        generate.main(["--run-dir", run_dir])
    assert str(error.value).startswith(f"{photo}: holds TFRecord shards (photo00-1.tfrec, ...), expected a folder of")
