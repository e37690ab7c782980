import glob
import json
import logging
import os
import shutil
import time

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow as tf

import checkpoints
import cli
from config import Config, as_json, from_command_line
from conftest import cli_error
import data
import evaluate
import metrics
import train

SIZE = 32


def warm_image(rng):
    """Smooth random blobs in warm colours; their channel-reversed copies are the cool domain B."""
    blobs = tf.image.resize(rng.random((1, 4, 4, 3)), (SIZE, SIZE), method="bicubic").numpy()[0]
    image = np.clip(blobs, 0, 1) * [1.0, 0.6, 0.25] + rng.normal(0, 0.03, (SIZE, SIZE, 3))
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def write_two_domains(root, train_count=24, test_count=12, seed=0):
    """trainA/trainB/testA/testB/testA_gt: A warm, B cool (unpaired), testA_gt = testA channel-reversed."""
    rng = np.random.default_rng(seed)
    images = {
        "trainA": [warm_image(rng) for _ in range(train_count)],
        "trainB": [warm_image(rng)[..., ::-1] for _ in range(train_count)],
        "testA": [warm_image(rng) for _ in range(test_count)],
        "testB": [warm_image(rng)[..., ::-1] for _ in range(test_count)],
    }
    images["testA_gt"] = [image[..., ::-1] for image in images["testA"]]
    for folder, content in images.items():
        os.makedirs(os.path.join(root, folder))
        for index, image in enumerate(content):
            iio.imwrite(os.path.join(root, folder, f"{index:03d}.png"), np.ascontiguousarray(image))
    return str(root)


def channel_mixer(matrix, name):
    """A fully convolutional 'generator' that maps each pixel's RGB by a fixed 3x3 matrix."""
    import keras

    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(3, 1, use_bias=False, name="mix")
    model = keras.Model(inputs, conv(inputs), name=name)
    conv.set_weights([np.asarray(matrix, np.float32).reshape(1, 1, 3, 3)])
    return model


SWAP = np.eye(3)[::-1]  # reverses the channels: A -> B and B -> A exactly


def tiny_features(images):
    """A deterministic stand-in for InceptionV3: 4x4 area-averaged colours, 48-d."""
    pooled = tf.image.resize(np.asarray(images, np.float32), (4, 4), method="area").numpy()
    return pooled.reshape(len(pooled), -1)


def folders(dataroot):
    return data.domain_folders(Config(dataroot=dataroot))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_two_domains(tmp_path_factory.mktemp("two_domains") / "data")


@pytest.fixture(scope="module")
def classifier(dataset):
    path = os.path.join(dataset, metrics.DOMAIN_FILE)
    model, _ = metrics.domain_classifier(folders(dataset), path, log=lambda message: None)
    return model, path


# ---- the math ----------------------------------------------------------------------------------

def test_frechet_distance_matches_the_closed_form_for_known_gaussians():
    mean_1, mean_2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 3.0, 0.0])
    variances_1, variances_2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    closed_form = np.sum((mean_1 - mean_2) ** 2) + np.sum((np.sqrt(variances_1) - np.sqrt(variances_2)) ** 2)
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    rotated = [rotation @ np.diag(v) @ rotation.T for v in (variances_1, variances_2)]
    assert metrics.frechet_distance(mean_1, np.diag(variances_1), mean_2, np.diag(variances_2)) == \
        pytest.approx(closed_form, rel=1e-9)
    assert metrics.frechet_distance(rotation @ mean_1, rotated[0], rotation @ mean_2, rotated[1]) == \
        pytest.approx(closed_form, rel=1e-9)


def test_frechet_distance_of_non_commuting_covariances_matches_the_matrix_square_root():
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(1)
    factors = rng.normal(size=(2, 4, 4))
    cov_1, cov_2 = (f @ f.T + 0.1 * np.eye(4) for f in factors)
    mean_1, mean_2 = rng.normal(size=(2, 4))
    expected = np.sum((mean_1 - mean_2) ** 2) + np.trace(cov_1 + cov_2 - 2 * np.real(sqrtm(cov_1 @ cov_2)))
    assert metrics.frechet_distance(mean_1, cov_1, mean_2, cov_2) == pytest.approx(expected, rel=1e-7)
    assert metrics.frechet_distance(mean_1, cov_1, mean_1, cov_1) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_of_samples_approaches_the_population_value():
    rng = np.random.default_rng(2)
    samples_1 = rng.normal(0.0, 1.0, (20000, 2))
    samples_2 = rng.normal(2.0, 3.0, (20000, 2))
    assert metrics.features_frechet_distance(samples_1, samples_2) == pytest.approx(2 * 4 + 2 * 4, rel=0.03)


def test_kid_of_a_set_with_itself_is_about_zero_and_grows_with_a_shift():
    rng = np.random.default_rng(3)
    features, same_distribution = (1 + 0.3 * rng.normal(size=(400, 32)) for _ in range(2))
    self_kid, self_std = metrics.kernel_inception_distance(features, features)
    independent_kid, independent_std = metrics.kernel_inception_distance(features, same_distribution)
    shifted = [metrics.kernel_inception_distance(features, features + shift)[0] for shift in (0.1, 0.2, 0.4)]
    assert abs(self_kid) < 0.05 * shifted[0]  # slightly negative: subsets share vectors
    assert abs(independent_kid) < 2 * independent_std < 0.05 * shifted[0]
    assert self_std > 0
    assert 0 < shifted[0] < shifted[1] < shifted[2]


def test_ssim_and_psnr_of_identical_images_are_one_and_capped():
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(3)]
    assert metrics.image_scores(images, images) == {"ssim": pytest.approx(1.0), "psnr": metrics.PSNR_CAP}
    noisy = [np.clip(i.astype(int) + rng.integers(-20, 21, i.shape), 0, 255).astype(np.uint8) for i in images]
    scores = metrics.image_scores(images, noisy)
    assert scores["ssim"] < 0.99 and 15 < scores["psnr"] < 40


# ---- the domain classifier and the scores end to end -----------------------------------------

def test_domain_classifier_separates_the_domains_on_held_out_images_and_is_cached(dataset, classifier):
    model, path = classifier
    facts = json.load(open(os.path.splitext(path)[0] + ".json"))
    assert facts["held_out_accuracy"] > 0.9
    cached, cached_facts = metrics.domain_classifier(folders(dataset), path, log=pytest.fail)
    assert cached_facts == facts
    probe = metrics.classifier_input(np.random.default_rng(5).uniform(-1, 1, (4, SIZE, SIZE, 3)))
    np.testing.assert_allclose(cached.predict(probe, verbose=0), model.predict(probe, verbose=0), atol=1e-6)


def test_scores_end_to_end_with_an_injected_feature_extractor(dataset, classifier):
    evaluator = metrics.Evaluator(folders(dataset), SIZE, ("AtoB", "BtoA"), classifier[1], tiny_features,
                                  log=pytest.fail)
    swap = {d: channel_mixer(SWAP, "swap") for d in ("AtoB", "BtoA")}
    keep = {d: channel_mixer(np.eye(3), "identity") for d in ("AtoB", "BtoA")}
    good, bad = evaluator.score(swap), evaluator.score(keep)
    for direction in ("AtoB", "BtoA"):
        assert good[direction]["fid"] < 0.2 * bad[direction]["fid"]
        assert good[direction]["kid"] < 0.2 * bad[direction]["kid"]
        assert good[direction]["domain_fd"] < bad[direction]["domain_fd"]
        assert good[direction]["domain"] >= 0.9 and bad[direction]["domain"] <= 0.1
        assert bad[direction]["domain_baseline"] == bad[direction]["domain"]  # identity = do nothing
        assert bad[direction]["domain_fd_baseline"] == pytest.approx(bad[direction]["domain_fd"], rel=1e-4)
    assert good["AtoB"]["ssim"] == pytest.approx(1.0) and good["AtoB"]["psnr"] == metrics.PSNR_CAP
    assert good["AtoB"]["ssim_baseline"] == bad["AtoB"]["ssim"] < 0.9
    assert "ssim" not in good["BtoA"]  # no testB_gt/


def make_run(run_dir, dataset, generators=True):
    """A run folder on `dataset` whose generators (unless not yet written) swap the channels."""
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(as_json(Config(dataroot=dataset, image_size=SIZE))))
    for name in ("generator_ab", "generator_ba") if generators else ():
        channel_mixer(SWAP, name).save(str(run_dir / f"{name}.keras"))
    return str(run_dir)


def run_evaluate(scripts, dataset, tmp_path, *options):
    """`python evaluate.py` on a run of two channel-swapping generators, without InceptionV3 weights
    (scripts: an empty Keras cache, no network); returns the finished process and the run directory."""
    run_dir = make_run(tmp_path / "run", dataset)
    return scripts.run("evaluate.py", "--run-dir", run_dir, *options, cwd=tmp_path), tmp_path / "run"


@pytest.mark.slow
def test_without_inception_weights_evaluate_prints_one_skip_line_and_the_other_scores(scripts, dataset, classifier,
                                                                                      tmp_path):
    result, run_dir = run_evaluate(scripts, dataset, tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr + result.stdout, result.stderr
    assert not [line for line in result.stdout.splitlines() if "FID" in line or "KID" in line]
    skip_lines = [line for line in result.stderr.splitlines() if "FID" in line or "KID" in line]
    assert len(skip_lines) == 1
    assert skip_lines[0].startswith("WARNING: FID/KID skipped") and metrics.INCEPTION_WEIGHTS in skip_lines[0]
    assert str(scripts.keras_home) in skip_lines[0]
    assert "domain score" in result.stdout and "SSIM vs ground truth" in result.stdout
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert report["AtoB"]["ssim"] == pytest.approx(1.0) and report["BtoA"]["domain"] >= 0.9
    assert "fid" not in report["AtoB"] and "skipped" in report["fid_kid"]


@pytest.mark.slow
def test_eval_every_logs_the_scores_to_tensorboard(dataset, classifier, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(metrics, "load_inception", lambda: (tiny_features, None))
    config, _ = from_command_line([
        "--dataroot", dataset, "--runs-root", str(tmp_path), "--name", "run", "--image-size", str(SIZE),
        "--batch-size", "8", "--epochs", "2", "--epochs-decay", "0", "--ngf", "4", "--ndf", "4",
        "--n-res-blocks", "1", "--sample-every", "1000", "--eval-every", "2", "--seed", "0"])
    train.train(config, verbose=0)
    values = {}
    for path in glob.glob(str(tmp_path / "run" / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag.startswith("eval/"):
                    values.setdefault(value.tag, []).append((event.step, float(tf.make_ndarray(value.tensor))))
    expected = {f"eval/{name}_{d}" for name in ("fid", "kid", "domain", "domain_fd") for d in ("AtoB", "BtoA")}
    assert set(values) == expected | {"eval/ssim_AtoB", "eval/psnr_AtoB"}
    assert all([step for step, _ in logged] == [6] for logged in values.values())  # once: after epoch 2
    assert 0 <= values["eval/domain_AtoB"][0][1] <= 1 and -1 <= values["eval/ssim_AtoB"][0][1] <= 1
    assert "eval at step 6" in capsys.readouterr().out


# ---- data that leaves some scores out ------------------------------------------------------------

def truncated_jpeg(path):
    """A JPEG cut inside its header: TensorFlow's decoder makes libjpeg print "Improper call to JPEG
    library in state 201" on stderr for it."""
    iio.imwrite(path, warm_image(np.random.default_rng(9)), extension=".jpg")
    with open(path, "r+b") as f:
        f.truncate(300)


@pytest.mark.slow
def test_broken_ground_truth_pairs_are_skipped_one_warning_each(scripts, tmp_path):
    """A missing truth, a truth of another size, an unreadable test image (a cut JPEG) and an
    unreadable truth: each pair is left out with one warning naming it, the rest scored."""
    root = write_two_domains(tmp_path / "data")
    os.remove(os.path.join(root, "testA_gt", "000.png"))
    iio.imwrite(os.path.join(root, "testA_gt", "001.png"), np.zeros((SIZE + 8, SIZE, 3), np.uint8))
    truncated_jpeg(os.path.join(root, "testA", "002.png"))
    with open(os.path.join(root, "testA_gt", "003.png"), "wb") as f:
        f.write(b"not an image")
    cafe = iio.imread(os.path.join(root, "testA", "004.png"))  # a name that is not UTF-8
    for folder, image in (("testA", cafe), ("testA_gt", cafe[..., ::-1])):
        with open(os.path.join(os.fsencode(root), folder.encode(), b"caf\xe9.png"), "wb") as f:
            f.write(iio.imwrite("<bytes>", np.ascontiguousarray(image), extension=".png"))

    result, run_dir = run_evaluate(scripts, root, tmp_path)  # the domain classifier too reads testA/ here
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "JPEG" not in result.stderr
    warnings = [line for line in result.stderr.splitlines()  # the weights' line comes once a process
                if line.startswith("WARNING: ") and not line.startswith("WARNING: FID/KID skipped")]
    expected = {"testA/000.png": "no ground truth", "testA/001.png": f"is {SIZE}x{SIZE + 8}, the image {SIZE}x{SIZE}",
                "testA/002.png": "not a readable image", "testA_gt/003.png": "not a readable image"}
    assert len(warnings) == len(expected), warnings
    for name, reason in expected.items():
        assert len([line for line in warnings if name in line and reason in line]) == 1, (name, warnings)
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert report["AtoB"]["images"] == 12  # 11 readable testA images and café
    assert report["AtoB"]["ssim"] == pytest.approx(1.0) and report["AtoB"]["ssim_baseline"] < 0.9


def test_one_test_image_per_domain_leaves_out_the_distances_with_one_line(scripts, classifier, tmp_path):
    """Nor is there ground truth of the right size: SSIM/PSNR are left out with one line too."""
    root = write_two_domains(tmp_path / "data", test_count=1)
    iio.imwrite(os.path.join(root, "testA_gt", "000.png"), np.zeros((SIZE // 2, SIZE // 2, 3), np.uint8))

    result, run_dir = run_evaluate(scripts, root, tmp_path, "--classifier", classifier[1])
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    skipped = [line for line in (result.stderr + result.stdout).splitlines() if "skipped" in line]
    assert skipped == [
        f"INFO: FID, KID and the domain Fréchet distance skipped: they need at least {metrics.MIN_SET_SIZE} images "
        "per set, and testA/ has 1, testB/ 1",
        f"SSIM/PSNR skipped: {os.path.join(root, 'testA_gt')}: no test image has a readable ground truth of the "
        "same name and size"]
    assert "domain score" in result.stdout
    report = json.loads((run_dir / "evaluation.json").read_text())
    for direction in ("AtoB", "BtoA"):
        assert report[direction]["images"] == report[direction]["target_images"] == 1
        assert report[direction]["domain"] == 1.0 and report[direction]["domain_baseline"] == 0.0
        assert not {"fid", "kid", "domain_fd", "domain_fd_baseline", "ssim"} & set(report[direction])
    assert report["fid_kid"] == skipped[0].removeprefix("INFO: ")


def test_the_evaluator_of_train_eval_every_scores_one_image_per_domain(classifier, tmp_path, monkeypatch, caplog):
    """train.py's path: an injected feature extractor is not called on sets too small for FID, and the
    line saying so is an INFO line, once a process however many Evaluators train.py makes."""
    root = write_two_domains(tmp_path / "data", test_count=1)
    shutil.rmtree(os.path.join(root, "testA_gt"))
    monkeypatch.setattr(metrics, "_said", set())
    caplog.set_level(logging.INFO, logger="cyclegan")
    evaluators = [metrics.Evaluator(folders(root), SIZE, ("AtoB", "BtoA"), classifier[1], pytest.fail, log=pytest.fail)
                  for _ in range(2)]
    results = evaluators[1].score({d: channel_mixer(SWAP, "swap") for d in ("AtoB", "BtoA")})
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("INFO", evaluators[0].fid_skipped)]
    assert "at least 2 images per set" in evaluators[1].fid_skipped
    assert set(results["AtoB"]) == set(results["BtoA"]) == {
        "images", "target_images", "domain", "domain_baseline"}


def test_the_weights_line_is_a_warning_said_once_a_process(dataset, classifier, monkeypatch, caplog):
    """train.py --eval-every may make an Evaluator more than once (one that failed is made again)."""
    reason = "FID/KID skipped: the InceptionV3 ImageNet weights are not in the Keras cache (test)"
    monkeypatch.setattr(metrics, "load_inception", lambda: (None, reason))
    monkeypatch.setattr(metrics, "_said", set())
    caplog.set_level(logging.INFO, logger="cyclegan")
    for _ in range(2):
        evaluator = metrics.Evaluator(folders(dataset), SIZE, ("AtoB",), classifier[1], log=pytest.fail)
        assert evaluator.fid_skipped == reason
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", reason)]


# ---- the classifier file: only evaluate.py's own, of this run's domains ----------------------------

def copy_dataset(dataset, target, with_classifier=False):
    """The dataset's image folders elsewhere (and its cached classifier, if asked)."""
    skip = () if with_classifier else ("domain_classifier_*",)
    return str(shutil.copytree(dataset, target, ignore=shutil.ignore_patterns(*skip)))


def test_files_evaluate_did_not_write_at_the_classifier_paths_are_refused_and_kept(dataset, classifier, tmp_path):
    run_dir = make_run(tmp_path / "run", dataset)
    (user := tmp_path / "user").mkdir()
    (user / "userclf.keras").write_text("my precious")
    assert cli_error(evaluate.main, ["--run-dir", run_dir, "--classifier", str(user / "userclf.keras")]) == (
        f"evaluate.py: error: {user / 'userclf.keras'}: not a domain classifier that evaluate.py wrote (no "
        "userclf.json beside it); kept as it is: give --classifier another .keras path, or remove the file")
    (user / "notes.json").write_text('{"mine": 1}')  # the .json a classifier at notes.keras would write
    assert cli_error(evaluate.main, ["--run-dir", run_dir, "--classifier", str(user / "notes.keras")]) == (
        f"evaluate.py: error: {user / 'notes.json'}: not the facts of a domain classifier that evaluate.py wrote; "
        "kept as it is: give --classifier another .keras path, or remove the file")
    assert {f.name: f.read_text() for f in user.iterdir()} == {"userclf.keras": "my precious", "notes.json": '{"mine": 1}'}

    other = copy_dataset(dataset, tmp_path / "other")  # the default path, DATAROOT/domain_classifier_64px.keras
    (tmp_path / "other" / metrics.DOMAIN_FILE).write_text("junk")
    message = cli_error(evaluate.main, ["--run-dir", run_dir, "--dataroot", other])
    assert message.startswith(f"evaluate.py: error: {os.path.join(other, metrics.DOMAIN_FILE)}: not a domain "
                              "classifier that evaluate.py wrote")
    assert (tmp_path / "other" / metrics.DOMAIN_FILE).read_text() == "junk"
    assert not (tmp_path / "other" / "domain_classifier_64px.json").exists()


def test_a_write_of_its_own_cut_short_is_done_again_by_one_process_at_a_time(dataset, classifier, tmp_path):
    """The facts go first: facts without their model are a classifier write that a kill cut short. While
    another process trains the classifier (holds the lock beside it) it is one line, nothing written."""
    path = str(tmp_path / "clf.keras")
    shutil.copy(os.path.splitext(classifier[1])[0] + ".json", tmp_path / "clf.json")
    with checkpoints.writer_lock(str(tmp_path / ".clf.lock"), path, "evaluate.py", "-", remove=True):
        with pytest.raises(cli.UsageError, match=rf"^{path} is in use by another evaluate.py or train.py --eval-ever"
                           rf"y \(PID {os.getpid()}\); wait for it to end, or give --classifier another \.keras"):
            metrics.domain_classifier(folders(dataset), path, log=pytest.fail)
    lines = []
    model, facts = metrics.domain_classifier(folders(dataset), path, log=lines.append)
    assert lines == [f"trained the domain classifier in {facts['seconds']:.0f} s; cached in {path}"]
    assert model.name == "domain_classifier" and sorted(os.listdir(tmp_path)) == ["clf.json", "clf.keras"]
    assert json.load(open(tmp_path / "clf.json")) == facts
    assert [[name for name, _ in facts["images"][d]] for d in "AB"] == [[f"{i:03d}.png" for i in range(24)]] * 2


def test_a_classifier_of_other_domains_is_refused_and_one_of_the_same_images_moved_is_used(
        dataset, classifier, tmp_path):
    other = write_two_domains(tmp_path / "other", seed=1)  # the same file names, other images
    run_dir = make_run(tmp_path / "run", other)
    assert cli_error(evaluate.main, ["--run-dir", run_dir, "--classifier", classifier[1]]) == (
        f"evaluate.py: error: {classifier[1]}: this domain classifier was trained on {dataset}/trainA and "
        f"{dataset}/trainB, not on this run's domains {other}/trainA and {other}/trainB; give --classifier another "
        ".keras path (a new one is trained there)")

    moved = copy_dataset(dataset, tmp_path / "moved", with_classifier=True)
    path = os.path.join(moved, metrics.DOMAIN_FILE)
    model, facts = metrics.domain_classifier(folders(moved), path, log=pytest.fail)  # used, not trained again
    assert facts["train"] == [f"{dataset}/trainA", f"{dataset}/trainB"] and model.name == "domain_classifier"
    os.rename(os.path.join(moved, "trainB", "000.png"), os.path.join(moved, "trainB", "999.png"))
    with pytest.raises(cli.UsageError, match="this domain classifier was trained on"):
        metrics.domain_classifier(folders(moved), path, log=pytest.fail)


def test_a_classifier_path_that_is_no_keras_file_or_holds_no_classifier_is_one_line(dataset, classifier, tmp_path):
    run_dir = make_run(tmp_path / "run", dataset)
    for path, expected in ((tmp_path / "mynotes.png", "expected a .keras file for the domain classifier (Keras "
                                                      "saves models as .keras)"),
                           (tmp_path / "run", "is a folder, expected a .keras file for the domain classifier")):
        assert cli_error(evaluate.main, ["--run-dir", run_dir, "--classifier", str(path)]) == \
            f"evaluate.py: error: {path}: {expected}"
    assert not (tmp_path / "mynotes.png").exists()
    shutil.copy(os.path.join(run_dir, "generator_ab.keras"), tmp_path / "gen.keras")  # and a classifier's facts
    shutil.copy(os.path.splitext(classifier[1])[0] + ".json", tmp_path / "gen.json")
    assert cli_error(evaluate.main, ["--run-dir", run_dir, "--classifier", str(tmp_path / "gen.keras")]) == (
        f"evaluate.py: error: {tmp_path / 'gen.keras'}: not a domain classifier (a Keras model named "
        "'generator_ab', without its 'features' layer); give --classifier another .keras path")


def test_a_classifier_that_cannot_be_written_is_one_line_naming_the_folder(dataset, tmp_path, monkeypatch):
    """Before any work: a folder under a file; a read-only dataset and run (Kaggle's input, a copied
    run), which os.access reports (root writes anywhere, so the test denies it as a read-only mount does)."""
    root = copy_dataset(dataset, tmp_path / "data")
    run_dir = make_run(tmp_path / "run", root)
    (tmp_path / "afile").write_text("")
    assert cli_error(evaluate.main, ["--run-dir", run_dir, "--classifier", str(tmp_path / "afile" / "c.keras")]) == (
        f"evaluate.py: error: {tmp_path / 'afile'}: the domain classifier cannot be written there "
        f"({tmp_path / 'afile'} is a file); give --classifier PATH in a folder you can write")
    access = os.access
    read_only = (root, run_dir)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: access(path, mode, **kw) and not (
        mode & os.W_OK and os.path.abspath(path) in read_only))
    assert cli_error(evaluate.main, ["--run-dir", run_dir]) == (
        f"evaluate.py: error: {run_dir}: the domain classifier cannot be written there ({run_dir} is not writable); "
        "give --classifier PATH in a folder you can write")
    assert sorted(os.listdir(run_dir)) == ["config.json", "generator_ab.keras", "generator_ba.keras"]


def test_an_evaluation_json_that_cannot_be_written_is_a_warning_after_the_scores(
        dataset, classifier, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setattr(metrics, "load_inception", lambda: (tiny_features, None))
    run_dir = make_run(tmp_path / "run", dataset)
    os.mkdir(os.path.join(run_dir, "evaluation.json"))  # a rename over it fails, as on a read-only run
    results = evaluate.main(["--run-dir", run_dir, "--direction", "AtoB", "--classifier", classifier[1]])
    assert results["AtoB"]["domain"] >= 0.9 and "AtoB: 12 testA images translated" in capsys.readouterr().out
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        f"{run_dir}/evaluation.json not written (Is a directory); the scores are the ones printed above"]
    assert not glob.glob(os.path.join(run_dir, "evaluation.tmp*"))


def test_a_run_without_generators_yet_is_one_line_saying_when_they_come(dataset, tmp_path):
    assert cli_error(evaluate.main, ["--run-dir", str(tmp_path / "nope")]) == (
        f"evaluate.py: error: --run-dir {tmp_path / 'nope'}: no such folder (a run made by train.py)")
    run_dir = make_run(tmp_path / "run", dataset, generators=False)
    assert cli_error(evaluate.main, ["--run-dir", run_dir, "--direction", "BtoA"]) == (
        f"evaluate.py: error: {run_dir}: the run has no generators yet (generator_ba.keras): train.py writes them "
        "when it stops, at its end or on Ctrl-C; evaluate the run after that")


def test_a_dataroot_without_test_folders_is_scored_on_its_training_folders_as_train_does(
        dataset, classifier, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(metrics, "load_inception", lambda: (tiny_features, None))
    root = copy_dataset(dataset, tmp_path / "data")
    for folder in ("testA", "testB", "testA_gt"):
        shutil.rmtree(os.path.join(root, folder))
    run_dir = make_run(tmp_path / "run", dataset)
    caplog.set_level(logging.INFO, logger="cyclegan")
    results = evaluate.main(["--run-dir", run_dir, "--dataroot", root, "--classifier", classifier[1]])
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("no test folder")]  # data.py's line
    assert len(said) == 2 and all(line.startswith(f"no test folder for domain {d}")
                                  and line.endswith(f"read the training folder {root}/train{d}")
                                  for d, line in zip("AB", said))
    assert results["AtoB"]["images"] == results["AtoB"]["target_images"] == 24
    report = json.load(open(os.path.join(run_dir, "evaluation.json")))
    assert (report["test_a"], report["test_b"]) == (f"{root}/trainA", f"{root}/trainB")
    written = {path: os.path.getmtime(path) for path in glob.glob(f"{run_dir}/generator_*.keras")}  # what was scored
    assert report["generators"] == {path: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(modified))
                                    for path, modified in written.items()} and len(written) == 2
