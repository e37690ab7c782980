"""Datasets and the input pipeline.

A dataset is a folder in the standard CycleGAN layout: trainA/ trainB/ testA/ testB/ (testA_gt/ when
the true B rendering of each testA image is known, as in the offline demo). The domains are unpaired:
A and B are shuffled independently, and an epoch is max(len A, len B) images as in the reference.

download.py fetches the official datasets; build_demo_dataset makes the offline one main.py uses.
"""
import contextlib
import logging
import os
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cli import UsageError
from distribute import tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
LAYOUT = "expected DATAROOT/trainA/ and DATAROOT/trainB/ with .jpg/.png/.bmp images (plus testA/ testB/)"
REFERENCE_LOAD_RATIO = 286 / 256
DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
DEMO_CROP = 72
DEMO_PHOTO_HEIGHT = 180
DEMO_TEST_ROWS = 72
PAINT_LEVELS = 6
PAINT_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
PAINT_PALETTE = np.array([[0.12, 0.10, 0.30],   # indigo shadows
                          [0.70, 0.25, 0.30],   # crimson
                          [0.95, 0.60, 0.20],   # orange
                          [1.00, 0.93, 0.70]])  # cream highlights

log = logging.getLogger("cyclegan")


def list_images(folder):
    """Sorted image paths in `folder` (jpg/png/bmp, any case); other files are ignored."""
    if not os.path.exists(folder):
        raise UsageError(f"{folder}: no such folder ({LAYOUT})")
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: is a file, expected a folder of images ({LAYOUT})")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def decode_image(data):
    """Encoded bytes -> uint8 RGB tensor; grayscale and RGBA become RGB."""
    return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)


def read_bytes(path):
    """A file's bytes, read by Python: tf.io.read_file cannot take a str path whose name is not
    UTF-8 (os.listdir gives such names as surrogate escapes)."""
    with open(path, "rb") as f:
        return f.read()


_stderr_lock = threading.Lock()


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 goes to /dev/null meanwhile: TensorFlow's JPEG decoder lets libjpeg print its
    complaint about a broken file ("Improper call to JPEG library in state 201") straight there, and
    the file is named in a warning instead."""
    with _stderr_lock:
        sys.stderr.flush()
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _decodes(path):
    try:
        decode_image(read_bytes(path))
        return True
    except (tf.errors.OpError, ValueError, OSError):
        return False


_named_unreadable = set()  # a script looks at a folder more than once; the warning comes once


def usable_images(paths):
    """The paths that decode; each one that does not is skipped with a warning naming it."""
    with _stderr_silenced(), ThreadPoolExecutor(max_workers=8) as pool:
        ok = list(pool.map(_decodes, paths))
    for path, good in zip(paths, ok):
        if not good and path not in _named_unreadable:
            _named_unreadable.add(path)
            log.warning("skipping %s: not a readable image", path)
    return [path for path, good in zip(paths, ok) if good]


def domain_images(dataroot, split, domain):
    """The usable images of DATAROOT/<split><domain>, or a one-line error if there are none."""
    if not os.path.isdir(dataroot):
        raise UsageError(f"--dataroot {dataroot}: not a folder ({LAYOUT})")
    folder = os.path.join(dataroot, f"{split}{domain}")
    paths = usable_images(list_images(folder))
    if not paths:
        raise UsageError(f"{folder}: no readable images ({LAYOUT})")
    return paths


def load_size_for(image_size):
    """The reference's resize-before-crop size: 286 for 256 crops, scaled for other sizes."""
    return int(round(image_size * REFERENCE_LOAD_RATIO))


def to_unit_range(image):
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def to_uint8(images):
    """float [-1, 1] (NumPy or tensor) -> uint8 NumPy array."""
    images = np.asarray(images, dtype=np.float32)
    return np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _resize(image, size):
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bicubic")
    return tf.clip_by_value(image, 0.0, 255.0)


def preprocess_train(image, image_size, seed, load_size=None):
    """Reference training transform: resize to load size, random crop, random flip, to [-1, 1].

    The crop and flip are stateless random ops of `seed` (two integers): one seed, one crop and
    flip, whichever thread of a parallel map runs it and in whatever order.
    """
    load_size = load_size or load_size_for(image_size)
    image = _resize(image, load_size)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
    image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], seed=crop_seed)
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image / 127.5 - 1.0


def preprocess_test(image, image_size):
    """Test transform: resize only, to [-1, 1]."""
    return _resize(image, image_size) / 127.5 - 1.0


def _domain_stream(paths, image_size, seed, deterministic, skip):
    """One domain's endless augmented images: the files reshuffled every epoch, the n-th image of the
    stream cropped and flipped with the seed (seed, n), so the stream depends on `seed` alone; the
    first `skip` images are passed over as file names, never decoded."""
    load_size = load_size_for(image_size)
    files = tf.data.Dataset.from_tensor_slices([os.fsencode(path) for path in paths])  # any file name
    files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True).repeat().enumerate().skip(skip)
    return files.map(
        lambda index, path: preprocess_train(decode_image(tf.io.read_file(path)), image_size,
                                             tf.stack([tf.constant(seed, tf.int64), index]), load_size),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def train_images(dataroot):
    """The usable images of trainA/ and trainB/, as (paths_a, paths_b); one line if either has none."""
    return domain_images(dataroot, "train", "A"), domain_images(dataroot, "train", "B")


def train_dataset(train_paths, image_size, batch_size, seed=None, start_step=0):
    """Endless batches of (real_a, real_b) from train_images' paths, each domain shuffled on its own;
    and steps per epoch.

    With a seed, every run yields the same batches in the same order, and one resumed at `start_step`
    yields what the uninterrupted run would have from there; without one, a run draws its own seed and
    lets parallel decoding hand images over as they finish.
    """
    paths_a, paths_b = train_paths
    deterministic = seed is not None
    if seed is None:
        seed = int(np.random.default_rng().integers(2 ** 32))
    skip = start_step * batch_size
    stream_a = _domain_stream(paths_a, image_size, seed, deterministic, skip)
    stream_b = _domain_stream(paths_b, image_size, seed + 1, deterministic, skip)
    pairs = tf.data.Dataset.zip((stream_a, stream_b)).batch(batch_size, drop_remainder=True)
    steps_per_epoch = max(1, max(len(paths_a), len(paths_b)) // batch_size)
    return pairs.prefetch(tf.data.AUTOTUNE), steps_per_epoch


def read_image(path):
    """A file -> float32 [-1, 1] RGB array at its own resolution."""
    return to_unit_range(decode_image(read_bytes(path))).numpy()


def write_image(path, image):
    """A [-1, 1] image -> an image file whose format follows the extension (JPEG at quality 95)."""
    import imageio.v3 as iio

    pixels = to_uint8(image)
    if path.lower().endswith((".jpg", ".jpeg")):
        iio.imwrite(path, pixels, quality=95)
    else:
        iio.imwrite(path, pixels)


def load_images(paths, image_size):
    """Test-preprocessed images as one float32 array in [-1, 1]."""
    return np.stack([preprocess_test(decode_image(read_bytes(p)), image_size).numpy() for p in paths])


def test_images(dataroot, domain, image_size, count):
    """The first `count` usable test images of a domain (trainX when testX is missing or empty)."""
    for split in ("test", "train"):
        folder = os.path.join(dataroot, f"{split}{domain}")
        if os.path.isdir(folder):
            paths = usable_images(list_images(folder))[:count]
            if paths:
                return load_images(paths, image_size)
    raise UsageError(f"{dataroot}: no readable images in test{domain}/ or train{domain}/ ({LAYOUT})")


# ---- the offline demo dataset ------------------------------------------------------------------

def paint(photo):
    """The demo's domain B style: a soft-brushed, auto-contrasted poster in a sunset palette with ink
    outlines. Deterministic; it depends only on the image it is given, so a crop's painting is its
    ground truth.
    """
    from skimage import color, filters

    image = filters.gaussian(photo.astype(np.float32) / 255.0, sigma=1.0, channel_axis=-1)
    tone = color.rgb2gray(image)
    low, high = np.percentile(tone, [2, 98])
    tone = np.clip((tone - low) / max(high - low, 1e-3), 0.0, 1.0)
    tone = np.round(tone * (PAINT_LEVELS - 1)) / (PAINT_LEVELS - 1)
    painted = np.stack([np.interp(tone, PAINT_STOPS, PAINT_PALETTE[:, c]) for c in range(3)], axis=-1)
    painted = filters.gaussian(painted, sigma=0.7, channel_axis=-1)
    outline = np.clip(3.0 * filters.sobel(tone), 0.0, 1.0)
    painted = painted * (1.0 - 0.5 * outline)[..., None]
    return np.clip(np.round(painted * 255.0), 0, 255).astype(np.uint8)


def _demo_photos():
    from skimage import data, transform

    photos = []
    for name in DEMO_PHOTOS:
        photo = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        scale = DEMO_PHOTO_HEIGHT / photo.shape[0]
        photo = transform.rescale(photo, scale, channel_axis=-1, anti_aliasing=True)
        photos.append(np.clip(np.round(photo * 255.0), 0, 255).astype(np.uint8))
    return photos


def _random_crops(photos, rows, count, rng):
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        top = rng.integers(rows[0], rows[1] - DEMO_CROP + 1)
        left = rng.integers(0, photo.shape[1] - DEMO_CROP + 1)
        crops.append(photo[top:top + DEMO_CROP, left:left + DEMO_CROP])
    return crops


def build_demo_dataset(root, train_per_domain=200, test_per_domain=20, seed=0):
    """Writes the offline demo dataset (standard layout plus testA_gt/) from scikit-image's photos.

    Each photo is scaled to 4 crop heights; training crops come from its top three quarters and test
    crops from the bottom quarter, so no test pixel is seen in training. trainA and trainB are drawn
    independently (different crops: unpaired); testA_gt/ holds the true painting of each testA crop.
    Returns `root`; a complete dataset already there is reused.
    """
    import imageio.v3 as iio

    folders = ("trainA", "trainB", "testA", "testB", "testA_gt")
    if all(os.path.isdir(os.path.join(root, f)) and os.listdir(os.path.join(root, f)) for f in folders):
        return root
    rng = np.random.default_rng(seed)
    photos = _demo_photos()
    train_rows = (0, DEMO_PHOTO_HEIGHT - DEMO_TEST_ROWS)
    test_rows = (DEMO_PHOTO_HEIGHT - DEMO_TEST_ROWS, DEMO_PHOTO_HEIGHT)
    content = {
        "trainA": _random_crops(photos, train_rows, train_per_domain, rng),
        "trainB": [paint(c) for c in _random_crops(photos, train_rows, train_per_domain, rng)],
        "testA": _random_crops(photos, test_rows, test_per_domain, rng),
        "testB": [paint(c) for c in _random_crops(photos, test_rows, test_per_domain, rng)],
    }
    content["testA_gt"] = [paint(c) for c in content["testA"]]
    staging = f"{root}.partial"
    for folder, images in content.items():
        os.makedirs(os.path.join(staging, folder), exist_ok=True)
        for index, image in enumerate(images):
            iio.imwrite(os.path.join(staging, folder, f"{index:04d}.png"), image)
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
    os.replace(staging, root)
    return root
