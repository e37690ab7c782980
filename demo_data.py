"""The offline demo dataset main.py trains on: crops of scikit-image's photos (domain A) and other crops
rendered in a painterly style (domain B), with the true painting of each test photo (testA_gt/), so
the demo can score its translations against ground truth. No network, no TensorFlow.
"""
import logging
import os
import re
import secrets
import shutil

import numpy as np

from checkpoints import process_exists
from cli import UsageError

log = logging.getLogger("cyclegan")

DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle")
DEMO_CROP = 72
DEMO_PHOTO_HEIGHT = 180
DEMO_TEST_ROWS = 72
DEMO_FOLDERS = ("trainA", "trainB", "testA", "testB", "testA_gt")
PAINT_LEVELS = 6
PAINT_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
PAINT_PALETTE = np.array([[0.12, 0.10, 0.30],   # indigo shadows
                          [0.70, 0.25, 0.30],   # crimson
                          [0.95, 0.60, 0.20],   # orange
                          [1.00, 0.93, 0.70]])  # cream highlights


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


def is_demo_dataset(root):
    """Whether ROOT holds all of the demo's folders, each with a file (a build renames them in at once)."""
    return all(os.path.isdir(os.path.join(root, f)) and os.listdir(os.path.join(root, f)) for f in DEMO_FOLDERS)


def holds_only_demo_images(path):
    """Whether the folder holds nothing but what a build writes: demo folders of NNNN.png files."""
    return all(entry in DEMO_FOLDERS and os.path.isdir(os.path.join(path, entry))
               and all(re.fullmatch(r"\d{4}\.png", name) for name in os.listdir(os.path.join(path, entry)))
               for entry in os.listdir(path))


def remove_stale_staging(root):
    """Removes the staging folders (ROOT.partial-PID.TOKEN) that builds killed midway left beside `root`:
    those of a process still running (another main.py building now) stay, and so does a folder of that
    name holding anything a build does not write (a user's). Returns their names."""
    parent, name = os.path.split(os.path.abspath(root))
    stale = []
    for entry in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        found = re.fullmatch(re.escape(name) + r"\.partial-(\d{1,9})\.[0-9a-f]{8}", entry)
        path = os.path.join(parent, entry)
        if found and os.path.isdir(path) and not process_exists(int(found.group(1))) and holds_only_demo_images(path):
            shutil.rmtree(path, ignore_errors=True)
            stale.append(entry)
    if stale:
        log.info("removed %d unfinished demo dataset(s) that killed builds left in %s: %s", len(stale), parent,
                 ", ".join(stale))
    return stale


def check_target(root):
    """UsageError unless `root` is a demo dataset, an empty folder or nothing yet."""
    if os.path.exists(root) and not is_demo_dataset(root) and (not os.path.isdir(root) or os.listdir(root)):
        raise UsageError(f"{root}: exists and is not a demo dataset; give a new or empty folder (nothing was changed)")


def build_demo_dataset(root, train_per_domain=200, test_per_domain=20, seed=0):
    """Writes the offline demo dataset (standard layout plus testA_gt/) from scikit-image's photos.

    Each photo is scaled to 4 crop heights; training crops come from its top three quarters and test
    crops from the bottom quarter, so no test pixel is seen in training. trainA and trainB are drawn
    independently (different crops: unpaired); testA_gt/ holds the true painting of each testA crop.
    Returns `root`; a complete dataset already there is reused.

    Several processes may build the same `root` at once (two main.py): each writes into a staging
    folder of its own (ROOT.partial-PID.*) renamed into place in one step, and the ones that find
    `root` complete when they rename use it and drop theirs. Staging folders of killed builds are removed.
    """
    import imageio.v3 as iio

    if is_demo_dataset(root):
        return root
    check_target(root)
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
    target = os.path.abspath(root)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    remove_stale_staging(target)
    staging = f"{target}.partial-{os.getpid()}.{secrets.token_hex(4)}"  # this process's own
    try:
        for folder, images in content.items():
            os.makedirs(os.path.join(staging, folder))
            for index, image in enumerate(images):
                iio.imwrite(os.path.join(staging, folder, f"{index:04d}.png"), image)
        try:
            os.replace(staging, target)  # atomic; POSIX renames onto an empty folder too
        except OSError:
            if not is_demo_dataset(target):  # else another process renamed its (same) dataset in first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
