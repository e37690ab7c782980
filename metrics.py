"""Scores of translations: FID and KID in InceptionV3 features, SSIM and PSNR against ground truth,
and a domain score from a small classifier trained on the dataset itself. evaluate.py prints them,
train.py --eval-every logs them to TensorBoard.
"""
import contextlib
import io
import logging
import os
import socket
import time

import numpy as np

import data
import image_io
import inference
from checkpoints import read_json, write_atomically, write_json, writer_lock
from cli import UsageError
from quiet import tensorflow

tf = tensorflow()
import keras  # noqa: E402  (after distribute: TensorFlow imported quietly)

INCEPTION_SIZE = 299
INCEPTION_WEIGHTS = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
INCEPTION_URL = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/" + INCEPTION_WEIGHTS
INCEPTION_MD5 = "bcbd6486424b2319ff4ef7d526e38f63"
DOWNLOAD_TIMEOUT_S = 20
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PSNR_CAP = 100.0
DOMAIN_SIZE = 64
DOMAIN_LOAD_SIZE = 128
DOMAIN_EPOCHS = 10
DOMAIN_BATCH = 32
DOMAIN_FILE = f"domain_classifier_{DOMAIN_SIZE}px.keras"
DIRECTIONS = {"AtoB": ("generator_ab", "A", "B"), "BtoA": ("generator_ba", "B", "A")}
MIN_SET_SIZE = 2  # FID's covariance and KID's unbiased estimate need two images per set

log = logging.getLogger("cyclegan")


# ---- the math --------------------------------------------------------------------------------

def feature_statistics(features):
    """Mean and covariance of a set of feature vectors (one per row)."""
    features = np.asarray(features, np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mean_1, cov_1, mean_2, cov_2):
    """Fréchet distance of two Gaussians: |m1 - m2|^2 + Tr(C1 + C2 - 2 (C1 C2)^1/2). Tr((C1 C2)^1/2) is the
    sum of square roots of the eigenvalues of the symmetric matrix C1^1/2 C2 C1^1/2 (same spectrum), which
    stays real and stable for singular covariances."""
    values, vectors = np.linalg.eigh(cov_1)
    root_1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root_1 @ cov_2 @ root_1)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(np.sum((mean_1 - mean_2) ** 2) + np.trace(cov_1) + np.trace(cov_2) - 2 * trace_root)


def features_frechet_distance(features_1, features_2):
    return frechet_distance(*feature_statistics(features_1), *feature_statistics(features_2))


def cubic_kernel(x, y):
    """The KID kernel (x.y / d + 1)^3 between the rows of x and y."""
    k = x @ y.T / x.shape[1] + 1
    return k * k * k


def kernel_inception_distance(features_1, features_2, subsets=KID_SUBSETS, subset_size=KID_SUBSET_SIZE, seed=0):
    """Unbiased MMD^2 with cubic_kernel over random subsets, (mean, std); a subset holds min(subset_size,
    half the smaller set) vectors, so that they differ from each other."""
    features_1, features_2 = (np.asarray(features, np.float64) for features in (features_1, features_2))
    size = max(2, min(subset_size, min(len(features_1), len(features_2)) // 2))
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(subsets):
        x = features_1[rng.choice(len(features_1), size, replace=False)]
        y = features_2[rng.choice(len(features_2), size, replace=False)]
        k_xx, k_yy, k_xy = (cubic_kernel(u, v) for u, v in ((x, x), (y, y), (x, y)))
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (size * (size - 1))
        estimates.append(within - 2 * k_xy.mean())
    return float(np.mean(estimates)), float(np.std(estimates))


def image_scores(truths, images):
    """Mean SSIM and PSNR (capped at PSNR_CAP: identical images have infinite PSNR) of uint8 images."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ssim = [structural_similarity(t, i, channel_axis=-1, data_range=255) for t, i in zip(truths, images)]
    with np.errstate(divide="ignore"):
        psnr = [min(peak_signal_noise_ratio(t, i, data_range=255), PSNR_CAP) for t, i in zip(truths, images)]
    return {"ssim": float(np.mean(ssim)), "psnr": float(np.mean(psnr))}


def ground_truth_pairs(paths, truth_dir):
    """(test image, its truth) path pairs: the truth has the test image's file name in `truth_dir`. A pair
    whose truth is missing, unreadable or of another size is left out with a warning naming the file; a
    UsageError says why when no pair is left. `paths` are readable images."""
    truth_paths = {p: os.path.join(truth_dir, os.path.basename(p)) for p in paths}
    for path, truth_path in truth_paths.items():
        if not os.path.isfile(truth_path):
            log.warning("skipping %s for SSIM/PSNR: no ground truth %s", path, truth_path)
    readable = set(data.usable_images([t for t in truth_paths.values() if os.path.isfile(t)]))
    pairs = []
    for path, truth_path in truth_paths.items():
        if truth_path not in readable:
            continue
        shape, truth_shape = (image_io.read_image(p).shape[:2] for p in (path, truth_path))
        if shape != truth_shape:
            log.warning("skipping %s for SSIM/PSNR: its ground truth %s is %dx%d, the image %dx%d",
                        path, truth_path, *truth_shape[::-1], *shape[::-1])
            continue
        pairs.append((path, truth_path))
    if not pairs:
        raise UsageError(f"{truth_dir}: no test image has a readable ground truth of the same name and size")
    return pairs


def ground_truth_scores(generator, test_dir, truth_dir, batch_size=inference.TRANSLATE_BATCH):
    """Mean SSIM and PSNR of G(test images) and of the images themselves against the truth.

    `generator` is a Keras model or the path of one saved by train.py; images keep their resolution.
    """
    if isinstance(generator, str):
        generator = inference.load_generator(generator)
    pairs = ground_truth_pairs(data.usable_images(data.list_images(test_dir)), truth_dir)
    return pair_scores(generator, pairs, batch_size)


def pair_scores(generator, pairs, batch_size=inference.TRANSLATE_BATCH):
    """ground_truth_scores for (test image, truth) path pairs from ground_truth_pairs."""
    inputs = [image_io.read_image(path) for path, _ in pairs]
    truths = [data.to_uint8(image_io.read_image(truth_path)) for _, truth_path in pairs]
    translated = inference.translate_images(generator, inputs, batch_size)
    return {"generator": image_scores(truths, [data.to_uint8(i) for i in translated]),
            "baseline": image_scores(truths, [data.to_uint8(i) for i in inputs])}


# ---- InceptionV3 features --------------------------------------------------------------------

def keras_cache_folder():
    """Where keras.utils.get_file keeps downloaded model weights."""
    home = os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
    return os.path.join(home, "models")


def load_inception(batch_size=16):
    """(extract_features, None) with the ImageNet InceptionV3, or (None, one-line reason to skip)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            previous_timeout = socket.getdefaulttimeout()
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
            try:
                weights = keras.utils.get_file(INCEPTION_WEIGHTS, INCEPTION_URL, cache_subdir="models",
                                               file_hash=INCEPTION_MD5)
            finally:
                socket.setdefaulttimeout(previous_timeout)
        model = keras.applications.InceptionV3(include_top=False, weights=weights, pooling="avg",
                                               input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3))
    except Exception as error:  # no network, a bad cached file, ...: all mean "no FID here"
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        reason = reason.replace(f"URL fetch failure on {INCEPTION_URL}: ", "")[:160]
        return None, (f"FID/KID skipped: the InceptionV3 ImageNet weights are not in the Keras cache and "
                      f"could not be downloaded ({reason}); put {INCEPTION_WEIGHTS} into "
                      f"{keras_cache_folder()}/ to get them")

    def extract_features(images):
        """[-1, 1] images of any size -> (N, 2048) pool features (InceptionV3 expects [-1, 1])."""
        features = []
        for start in range(0, len(images), batch_size):
            batch = tf.image.resize(images[start:start + batch_size], (INCEPTION_SIZE, INCEPTION_SIZE),
                                    method="bilinear")
            features.append(np.asarray(model.predict_on_batch(batch)))
        return np.concatenate(features)

    return extract_features, None


# ---- the domain classifier -------------------------------------------------------------------

def classifier_input(images, size=DOMAIN_SIZE):
    """[-1, 1] images of one size -> size x size (area averaging, the same for real and translated)."""
    return tf.image.resize(np.asarray(images, np.float32), (size, size), method="area").numpy()


def apply(model, images, batch_size=256):
    """A small model's outputs in inference mode, in batches (no per-call retracing, unlike predict)."""
    return np.concatenate([keras.ops.convert_to_numpy(model(images[start:start + batch_size], training=False))
                           for start in range(0, len(images), batch_size)])


def build_domain_classifier(size=DOMAIN_SIZE, seed=0):
    """Four strided convolutions, global average pooling, a 64-d feature layer, P(domain B)."""
    init = lambda index: keras.initializers.GlorotUniform(seed=seed + index)  # noqa: E731
    inputs = keras.Input((size, size, 3))
    x = inputs
    for index, filters in enumerate((16, 32, 64, 128)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu",
                                kernel_initializer=init(index))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    features = keras.layers.Dense(64, activation="relu", kernel_initializer=init(4), name="features")(x)
    output = keras.layers.Dense(1, activation="sigmoid", kernel_initializer=init(5), name="domain_b")(features)
    return keras.Model(inputs, output, name="domain_classifier")


def train_domain_classifier(train_a, train_b, epochs=DOMAIN_EPOCHS, seed=0):
    """Fits a classifier on trainA (0) vs trainB (1) classifier inputs, classes balanced, flips as
    augmentation. The global random state is left alone (train.py may call this mid-run)."""
    model = build_domain_classifier(train_a.shape[1], seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    images = np.concatenate([train_a, train_b])
    labels = np.concatenate([np.zeros(len(train_a)), np.ones(len(train_b))]).astype(np.float32)
    weights = np.where(labels == 1, len(images) / (2 * len(train_b)), len(images) / (2 * len(train_a)))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(images))
        batch = images[order]
        flip = rng.random(len(batch)) < 0.5
        batch[flip] = batch[flip, :, ::-1]
        model.fit(batch, labels[order], sample_weight=weights[order], batch_size=DOMAIN_BATCH,
                  epochs=1, shuffle=False, verbose=0)
    return model


def domain_accuracy(model, images_a, images_b):
    """Fraction of images_a judged A and images_b judged B, over both sets."""
    judged_b = [apply(model, images)[:, 0] > 0.5 for images in (images_a, images_b)]
    return float((np.sum(~judged_b[0]) + np.sum(judged_b[1])) / (len(images_a) + len(images_b)))


CLASSIFIER_FACTS = ("train", "test", "held_out_accuracy", "size")  # what the .json beside a classifier holds
ELSEWHERE = "give --classifier another .keras path"


def facts_path_of(path):
    """The .json beside a classifier's .keras file; one line for a path that cannot be one."""
    if os.path.isdir(path):
        raise UsageError(f"{path}: is a folder, expected a .keras file for the domain classifier")
    if not path.endswith(".keras"):
        raise UsageError(f"{path}: expected a .keras file for the domain classifier (Keras saves models as .keras)")
    return os.path.splitext(path)[0] + ".json"


def cached_facts(path):
    """The facts of a classifier that domain_classifier wrote at `path`, None when it may write there (nothing
    there, or facts without their model: its own write cut short); anything else is the user's: one line."""
    facts_path = facts_path_of(path)
    if not os.path.exists(facts_path):
        if os.path.exists(path):
            raise UsageError(f"{path}: not a domain classifier that evaluate.py wrote (no "
                             f"{os.path.basename(facts_path)} beside it); kept as it is: {ELSEWHERE}, or remove "
                             "the file")
        return None
    try:
        facts = read_json(facts_path)
    except UsageError:
        facts = None
    if not (isinstance(facts, dict) and set(CLASSIFIER_FACTS) <= set(facts)):
        raise UsageError(f"{facts_path}: not the facts of a domain classifier that evaluate.py wrote; kept as it "
                         f"is: {ELSEWHERE}, or remove the file")
    return facts if os.path.exists(path) else None


def check_classifier(path, folders):
    """The facts of the classifier cached at `path` if trained on the training folders of `folders` (the same
    folders, or the same files, names and sizes, in a dataset that moved); None when one is to be trained
    there. One line otherwise, before any work."""
    facts = cached_facts(path)
    if facts is None:
        return None
    trained_on, domains = facts["train"], [folders.train_a, folders.train_b]
    if [os.path.realpath(f) for f in trained_on] == [os.path.realpath(f) for f in domains]:
        return facts
    files = facts.get("images")
    if files and all(files.get(d) == data.image_files(folders.images("train", d)) for d in "AB"):
        return facts  # the dataset moved
    raise UsageError(f"{path}: this domain classifier was trained on {trained_on[0]} and {trained_on[1]}, not on "
                     f"this run's domains {domains[0]} and {domains[1]}; {ELSEWHERE} (a new one is trained there)")


def domain_classifier(folders, path, log=print):
    """The classifier cached at `path` and its facts (see check_classifier), or a new one trained on the
    training folders of `folders` (a data.Folders), scored on its test folders, and cached there. One process
    trains it at a time (a lock file beside it): a second is one line, or uses what the first just wrote."""
    facts = check_classifier(path, folders)
    if facts is None:
        folder, name = os.path.split(os.path.splitext(os.path.abspath(path))[0])
        os.makedirs(folder, exist_ok=True)
        with writer_lock(os.path.join(folder, f".{name}.lock"), path, "evaluate.py or train.py --eval-every",
                         ELSEWHERE, remove=True):
            facts = check_classifier(path, folders) or train_and_cache_classifier(folders, path, log)
    model = inference.load_generator(path)
    if model.name != "domain_classifier" or "features" not in [layer.name for layer in model.layers]:
        raise UsageError(f"{path}: not a domain classifier (a Keras model named {model.name!r}, without its "
                         f"'features' layer); {ELSEWHERE}")
    return model, facts


def train_and_cache_classifier(folders, path, log):
    """domain_classifier's new classifier, written to `path`; returns its facts."""
    started = time.time()
    train = {d: folders.images("train", d) for d in "AB"}
    load = lambda images: classifier_input(data.load_images(images, DOMAIN_LOAD_SIZE))  # noqa: E731
    model = train_domain_classifier(load(train["A"]), load(train["B"]))
    facts = {"train": [folders.train_a, folders.train_b], "test": [folders.test_a, folders.test_b],
             "images": {d: data.image_files(images) for d, images in train.items()},
             "held_out_accuracy": domain_accuracy(model, *(load(folders.images("test", d)) for d in "AB")),
             "epochs": DOMAIN_EPOCHS, "size": DOMAIN_SIZE, "seconds": time.time() - started}
    try:
        write_json(facts_path_of(path), facts)  # first: facts without their model are a write of ours cut short
        write_atomically(path, model.save)
    except OSError as error:  # a full disk: no facts left without their model
        with contextlib.suppress(FileNotFoundError):
            os.remove(facts_path_of(path))
        raise UsageError(f"{path}: could not write the domain classifier ({error.strerror or error}); nothing "
                         "half-written is left: make room, then run the same command again") from None
    log(f"trained the domain classifier in {facts['seconds']:.0f} s; cached in {path}")
    return facts


def default_classifier_path(folders, run_dir):
    """Beside the dataset (DATAROOT, or the folder holding both training folders, in a file named after
    them), so every run on it is scored by the same classifier; in the run when that folder is read-only
    (Kaggle's input) or there is none."""
    if folders.dataroot:
        folder, name = folders.dataroot, DOMAIN_FILE
    else:
        a, b = (os.path.abspath(f) for f in (folders.train_a, folders.train_b))
        folder = os.path.dirname(a) if os.path.dirname(a) == os.path.dirname(b) else run_dir
        name = f"{os.path.splitext(DOMAIN_FILE)[0]}_{os.path.basename(a)}_{os.path.basename(b)}.keras"
    return os.path.join(folder if os.access(folder, os.W_OK) else run_dir, name)


# ---- scoring ---------------------------------------------------------------------------------

_said = set()  # train.py --eval-every may make an Evaluator more than once; its notes come once


def say_once(level, message):
    if message not in _said:
        _said.add(message)
        log.log(level, "%s", message)


def as_saved(images):
    """[-1, 1] images rounded to 8 bits, as they would be written to image files."""
    return data.to_unit_range(data.to_uint8(images)).numpy()


class Evaluator:
    """The test split, the feature extractors and the domain classifier, prepared once; score() then
    measures any generators (evaluate.py once, train.py every few epochs).

    `extract_features` maps [-1, 1] images to feature rows for FID/KID; None loads InceptionV3.
    Scores that cannot be had are left out with one line saying why: FID/KID without the weights
    (`fid_skipped` holds the reason), the Fréchet distances with fewer than MIN_SET_SIZE test images
    in a domain, SSIM/PSNR without a usable ground-truth pair.
    """

    def __init__(self, folders, image_size, directions, classifier_path, extract_features=None, log=print):
        self.directions = directions
        tests = {d: folders.images("test", d) for d in "AB"}  # image paths or data.Records (with_test_fallback's)
        self.tests = {d: as_saved(data.load_images(tests[d], image_size)) for d in "AB"}
        self.fid_skipped = None
        self.with_distances = min(len(t) for t in tests.values()) >= MIN_SET_SIZE
        if not self.with_distances:
            names = {d: os.path.basename(os.path.normpath(folders.folder("test", d))) for d in "AB"}
            self.fid_skipped = (f"FID, KID and the domain Fréchet distance skipped: they need at least {MIN_SET_SIZE} "
                                f"images per set, and {names['A']}/ has {len(tests['A'])}, {names['B']}/ "
                                f"{len(tests['B'])}")
            extract_features = None
        elif extract_features is None:
            extract_features, self.fid_skipped = load_inception()
        if self.fid_skipped:  # INFO for a split too small, WARNING for weights that could be had
            say_once(logging.WARNING if self.with_distances else logging.INFO, self.fid_skipped)
        self.extract_features = extract_features
        self.truth_pairs = {}
        for direction in directions:
            source = DIRECTIONS[direction][1]
            truth_dir = os.path.normpath(folders.folder("test", source)) + "_gt"  # DATAROOT/testA_gt/
            if os.path.isdir(truth_dir) and not isinstance(tests[source], data.Records):
                try:
                    self.truth_pairs[source] = ground_truth_pairs(tests[source], truth_dir)
                except UsageError as error:
                    log(f"SSIM/PSNR skipped: {error}")
        self.classifier, self.classifier_facts = domain_classifier(folders, classifier_path, log)
        self.penultimate = keras.Model(self.classifier.input, self.classifier.get_layer("features").output)
        self.real = {d: {"domain_features": apply(self.penultimate, classifier_input(images))}
                     for d, images in self.tests.items()}
        if self.extract_features:
            for d, images in self.tests.items():
                self.real[d]["features"] = self.extract_features(images)

    def score(self, generators, batch_size=inference.TRANSLATE_BATCH):
        """{direction: {score: value}} for generators given as {"AtoB": model, "BtoA": model}."""
        results = {}
        for direction in self.directions:
            _, source, target = DIRECTIONS[direction]
            generator = generators[direction]
            translated = as_saved(np.stack(inference.translate_images(generator, list(self.tests[source]), batch_size)))
            scores = {"images": len(translated), "target_images": len(self.tests[target])}
            if self.extract_features:
                features = self.extract_features(translated)
                scores["fid"] = features_frechet_distance(features, self.real[target]["features"])
                scores["kid"], scores["kid_std"] = kernel_inception_distance(features, self.real[target]["features"])
            scores.update(self.domain_scores(translated, target))
            scores.update({f"{k}_baseline": v for k, v in self.domain_scores(self.tests[source], target).items()})
            if source in self.truth_pairs:
                truth = pair_scores(generator, self.truth_pairs[source], batch_size)
                scores.update(truth["generator"])
                scores.update({f"{k}_baseline": v for k, v in truth["baseline"].items()})
            results[direction] = scores
        return results

    def domain_scores(self, images, target):
        """The fraction of `images` the classifier assigns to `target` ("domain") and, with enough
        images, their Fréchet distance to the real target test images in its penultimate features."""
        small = classifier_input(images)
        judged_b = apply(self.classifier, small)[:, 0] > 0.5
        scores = {"domain": float(np.mean(judged_b if target == "B" else ~judged_b))}
        if self.with_distances:
            scores["domain_fd"] = features_frechet_distance(apply(self.penultimate, small),
                                                            self.real[target]["domain_features"])
        return scores

    def log_to_tensorboard(self, writer, generators, step):
        """Scores the generators and writes eval/<score>_<direction> scalars; prints the cost."""
        started = time.time()
        results = self.score(generators)
        with writer.as_default():
            for direction, scores in results.items():
                for name in ("fid", "kid", "domain", "domain_fd", "ssim", "psnr"):
                    if name in scores:
                        tf.summary.scalar(f"eval/{name}_{direction}", scores[name], step=step)
        writer.flush()
        summary = ", ".join(f"{d} domain {s['domain']:.2f}" + (f" FID {s['fid']:.1f}" if "fid" in s else "")
                            for d, s in results.items())
        print(f"eval at step {step}: {summary} (took {time.time() - started:.1f} s)")
        return results
