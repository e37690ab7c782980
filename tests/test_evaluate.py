import glob
import json
import os
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import tensorflow as tf

import cli
from config import Config, as_json, from_command_line
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


def run_evaluate(scripts, dataset, tmp_path, *options):
    """`python evaluate.py` on a run of two channel-swapping generators, without InceptionV3 weights
    (scripts: an empty Keras cache, no network); returns the finished process and the run directory."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(as_json(Config(dataroot=dataset, image_size=SIZE))))
    for name in ("generator_ab", "generator_ba"):
        channel_mixer(SWAP, name).save(str(run_dir / f"{name}.keras"))
    return scripts.run("evaluate.py", "--run-dir", run_dir, *options, cwd=tmp_path), run_dir


@pytest.mark.slow
def test_without_inception_weights_evaluate_prints_one_skip_line_and_the_other_scores(scripts, dataset, classifier,
                                                                                      tmp_path):
    result, run_dir = run_evaluate(scripts, dataset, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    skip_lines = [line for line in result.stdout.splitlines() if "FID" in line or "KID" in line]
    assert len(skip_lines) == 1
    assert "skipped" in skip_lines[0] and metrics.INCEPTION_WEIGHTS in skip_lines[0]
    assert str(scripts.keras_home) in skip_lines[0]
    assert "domain score" in result.stdout and "SSIM vs ground truth" in result.stdout
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert report["AtoB"]["ssim"] == pytest.approx(1.0) and report["BtoA"]["domain"] >= 0.9
    assert "fid" not in report["AtoB"] and "skipped" in report["fid_kid"]


def test_a_missing_run_dir_is_a_usage_error(tmp_path):
    with pytest.raises(cli.UsageError, match="--run-dir"):
        evaluate.main(["--run-dir", str(tmp_path / "nope")])


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
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING: ")]
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
    skipped = [line for line in result.stdout.splitlines() if "skipped" in line]
    assert skipped == [
        f"FID, KID and the domain Fréchet distance skipped: they need at least {metrics.MIN_SET_SIZE} images per "
        "set, and testA/ has 1, testB/ 1",
        f"SSIM/PSNR skipped: {os.path.join(root, 'testA_gt')}: no test image has a readable ground truth of the "
        "same name and size"]
    assert "domain score" in result.stdout
    report = json.loads((run_dir / "evaluation.json").read_text())
    for direction in ("AtoB", "BtoA"):
        assert report[direction]["images"] == report[direction]["target_images"] == 1
        assert report[direction]["domain"] == 1.0 and report[direction]["domain_baseline"] == 0.0
        assert not {"fid", "kid", "domain_fd", "domain_fd_baseline", "ssim"} & set(report[direction])
    assert report["fid_kid"] == skipped[0]


def test_the_evaluator_of_train_eval_every_scores_one_image_per_domain(classifier, tmp_path):
    """train.py's path: an injected feature extractor is not called on sets too small for FID."""
    root = write_two_domains(tmp_path / "data", test_count=1)
    shutil.rmtree(os.path.join(root, "testA_gt"))
    lines = []
    evaluator = metrics.Evaluator(folders(root), SIZE, ("AtoB", "BtoA"), classifier[1], pytest.fail, log=lines.append)
    results = evaluator.score({d: channel_mixer(SWAP, "swap") for d in ("AtoB", "BtoA")})
    assert lines == [evaluator.fid_skipped] and "at least 2 images per set" in lines[0]
    assert set(results["AtoB"]) == set(results["BtoA"]) == {
        "images", "target_images", "domain", "domain_baseline"}
