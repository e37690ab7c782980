"""Datasets and the input pipeline.

A dataset is a folder in the standard CycleGAN layout: trainA/ trainB/ testA/ testB/ (testA_gt/ when
the true B rendering of each testA image is known, as in the offline demo), or domain folders named one
by one (--train-a ...: Kaggle's monet_tfrec/ photo_tfrec/); domain_folders resolves a run's Config into
the four folders. A domain folder holds image files or TFRecord shards of tf.train.Example records with
the encoded image under one feature (--tfrecord-key). The domains are unpaired: A and B are shuffled
independently, and an epoch is max(len A, len B) images as in the reference. download.py fetches the
official datasets; demo_data.py makes the offline one main.py uses.
"""
import dataclasses
import filecmp
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np

from cli import UsageError
from config import Config
from quiet import stderr_silenced, tensorflow

tf = tensorflow()

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
UNREAD_IMAGE_EXTENSIONS = (".gif", ".webp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl")  # said, not read
SHARD_EXTENSIONS = (".tfrec", ".tfrecord")
CONTENT = ".jpg/.png/.bmp images or .tfrec/.tfrecord TFRecord shards"
LAYOUT = f"expected DATAROOT/trainA/ and DATAROOT/trainB/ with {CONTENT} (plus testA/ testB/)"
SHUFFLE_WINDOW = 2048  # encoded records a shard stream shuffles among (a smaller domain: all of it)
INTERLEAVED_SHARDS = 16  # shards read at once
REFERENCE_LOAD_RATIO = 286 / 256
log = logging.getLogger("cyclegan")


def folder_files(folder, expected=LAYOUT):
    """(image paths, TFRecord shard paths) in `folder`, sorted, by extension in any case; other files
    are ignored. A missing folder, or a file, is a one-line error ending with what was `expected`."""
    if not os.path.exists(folder):
        raise UsageError(f"{folder}: no such folder ({expected})")
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: is a file, expected a folder of images ({expected})")
    paths = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
    paths = [p for p in paths if os.path.isfile(p)]
    unread = [p for p in paths if p.lower().endswith(UNREAD_IMAGE_EXTENSIONS)]
    if unread:
        kinds = sorted({os.path.splitext(p)[1].lower() for p in unread})
        warn_skipped(f"{len(unread)} {'/'.join(kinds)} file{'s' * (len(unread) > 1)} in {folder} (e.g. "
                     f"{os.path.basename(unread[0])})", "only .jpg, .png and .bmp images are read")
    return ([p for p in paths if p.lower().endswith(IMAGE_EXTENSIONS)],
            [p for p in paths if p.lower().endswith(SHARD_EXTENSIONS)])


def list_images(folder):
    """Sorted image paths in `folder` (jpg/png/bmp, any case); other files are ignored, and TFRecord
    shards refused: the callers (generate.py's input, ground truth) read image files only."""
    images, shards = folder_files(folder)
    if shards:
        raise UsageError(f"{folder}: holds TFRecord shards ({os.path.basename(shards[0])}"
                         f"{', ...' if len(shards) > 1 else ''}), expected a folder of .jpg/.png/.bmp images")
    return images


def decode_image(data):
    """Encoded bytes -> uint8 RGB tensor; grayscale and RGBA become RGB."""
    return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)


def read_bytes(path):
    """A file's bytes, read by Python: tf.io.read_file cannot take a str path whose name is not
    UTF-8 (os.listdir gives such names as surrogate escapes)."""
    with open(path, "rb") as f:
        return f.read()


def _decodes_bytes(data):
    try:
        decode_image(data)
        return True
    except (tf.errors.OpError, ValueError):
        return False


def _decodes(path):
    try:
        return _decodes_bytes(read_bytes(path))
    except OSError:
        return False


_named_unreadable = set()  # a script looks at a folder more than once; the warning comes once


def warn_skipped(what, reason="not a readable image"):
    if what not in _named_unreadable:
        _named_unreadable.add(what)
        log.warning("skipping %s: %s", what, reason)


def usable_images(paths):
    """The paths that decode; each one that does not is skipped with a warning naming it (libjpeg's own
    complaint, "Improper call to JPEG library in state 201", kept off the terminal)."""
    with stderr_silenced(), ThreadPoolExecutor(max_workers=8) as pool:
        ok = list(pool.map(_decodes, paths))
    for path, good in zip(paths, ok):
        if not good:
            warn_skipped(path)
    return [path for path, good in zip(paths, ok) if good]


# ---- TFRecord shards ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Records:
    """A domain held in TFRecord shards, as one pass over them found it: `lengths` records can be read
    from each shard, of which the (shard index, record index) pairs in `bad` hold no decodable image
    under the feature `key`. len() is the number of usable images."""
    shards: tuple
    key: str
    lengths: tuple
    bad: tuple

    def __len__(self):
        return sum(self.lengths) - len(self.bad)


def record_image(record, key):
    """The encoded image of a serialized tf.train.Example, or (None, why not: a text, or its features)."""
    from google.protobuf.message import DecodeError

    try:
        feature = tf.train.Example.FromString(record).features.feature
    except DecodeError:
        return None, "not a tf.train.Example"
    if key not in feature or not feature[key].bytes_list.value:
        return None, feature
    return feature[key].bytes_list.value[0], None


def features_hint(feature):
    """What a record without the --tfrecord-key feature holds instead, and which of it is an image."""
    guess = next((f" {name}?" for name, value in sorted(feature.items())
                  if value.bytes_list.value and _decodes_bytes(value.bytes_list.value[0])), "")
    return f"their features: {', '.join(sorted(feature)) or 'none'} (--tfrecord-key{guess})"


def _shard_records(shard, length=None):
    records = tf.data.TFRecordDataset(os.fsencode(shard))
    return (records if length is None else records.take(length)).as_numpy_iterator()


_checked_shards = {}  # (shard, key, size, mtime) -> _check_shard's answer: the pass is made once


def _check_shard(shard, key):
    """(records readable, [(index, reason)] of those without a decodable image, the indices of those without
    `key`, features_hint of one of them, whether the shard is damaged (cut short, overwritten: used up to it))."""
    status = os.stat(shard)
    cache_key = (shard, key, status.st_size, status.st_mtime_ns)
    if cache_key not in _checked_shards:
        length, problems, keyless, hint, damaged = 0, [], [], None, False
        try:
            for record in _shard_records(shard):
                image, reason = record_image(record, key)
                if image is not None and not _decodes_bytes(image):
                    reason = "not a readable image"
                if isinstance(reason, str):
                    problems.append((length, reason))
                elif reason is not None:  # no `key`: the record's features
                    hint = hint or features_hint(reason)
                    keyless.append(length)
                length += 1
        except tf.errors.DataLossError:
            damaged = True
        _checked_shards[cache_key] = length, problems, keyless, hint, damaged
    return _checked_shards[cache_key]


def count_records(shards, key, folder):
    """The Records of `shards`: one pass decodes every image, each one that does not decode is skipped with a
    warning naming its shard and index, those without `key` with one for all (one line if no record has it)."""
    checked_before = len(_checked_shards)
    with stderr_silenced(), ThreadPoolExecutor(max_workers=8) as pool:
        checked = list(pool.map(lambda shard: _check_shard(shard, key), shards))
    for shard, (length, problems, _, _, damaged) in zip(shards, checked):
        for index, reason in problems:
            warn_skipped(f"{shard} record {index}", reason)
        if damaged:
            warn_skipped(f"the rest of {shard} from record {length}", "cut short or damaged")
    bad = [(s, index) for s, (_, problems, keyless, _, _) in enumerate(checked)
           for index in [problem for problem, _ in problems] + keyless]
    records = Records(tuple(shards), key, tuple(length for length, *_ in checked), tuple(bad))
    without_key = [(shard, index, hint) for shard, (*_, keyless, hint, _) in zip(shards, checked) for index in keyless]
    if without_key:
        shard, index, hint = without_key[0]
        first, missing = f"{shard} record {index}", f"no image bytes under the feature {key!r}"
        if not len(records):
            raise UsageError(f"{folder}: no readable images: {missing} in {len(without_key)} records; {hint}")
        many = f"{len(without_key)} records in {folder} (the first: {first})"
        warn_skipped(first if len(without_key) == 1 else many, f"{missing}; {hint}")
    if len(_checked_shards) > checked_before:  # counted now, not by an earlier call
        log.info("%s: %d images in %d TFRecord shards", folder, len(records), len(shards))
    return records


def record_images(records, count=None):
    """The encoded images of the first `count` (default: all) usable records, in shard order."""
    bad, images = set(records.bad), []
    for shard_index, (shard, length) in enumerate(zip(records.shards, records.lengths)):
        for index, record in enumerate(_shard_records(shard, length)):
            if (shard_index, index) not in bad:
                images.append(record_image(record, records.key)[0])
                if len(images) == count:
                    return images
    return images


# ---- domain folders ----------------------------------------------------------------------------

FOLDER_FIELDS = ("train_a", "train_b", "test_a", "test_b")


@dataclass(frozen=True)
class Folders:
    """A run's four domain folders, resolved once from its Config by domain_folders, so that training,
    samples, evaluation and generate.py read the same ones. `given`: the fields that came from an option
    (--train-a ...) rather than DATAROOT; a test field equal to its training field has no test folder."""
    train_a: str
    train_b: str
    test_a: str
    test_b: str
    tfrecord_key: str
    dataroot: Optional[str] = None
    given: tuple = ()

    def folder(self, split, domain):
        return getattr(self, f"{split}_{domain.lower()}")

    def expected(self, split, domain):
        """What a one-line error about the folder says was expected."""
        name = f"{split}_{domain.lower()}"
        if name in self.given:
            return f"--{name.replace('_', '-')}: expected a folder of {CONTENT}"
        if self.dataroot:
            return LAYOUT
        return self.expected("train", domain)

    def images(self, split, domain):
        """domain_images of the folder."""
        return domain_images(self.folder(split, domain), self.tfrecord_key, self.expected(split, domain))


def domain_folders(config):
    """The four domain folders of a Config: --train-a or DATAROOT/trainA/ and so on; without --dataroot
    or --test-a, domain A's test folder is its training folder."""
    root, given = config.dataroot, tuple(name for name in FOLDER_FIELDS if getattr(config, name))
    train_a = config.train_a or os.path.join(root, "trainA")
    train_b = config.train_b or os.path.join(root, "trainB")
    test_a = config.test_a or (os.path.join(root, "testA") if root else train_a)
    test_b = config.test_b or (os.path.join(root, "testB") if root else train_b)
    return Folders(train_a, train_b, test_a, test_b, config.tfrecord_key, root, given)


def domain_images(folder, tfrecord_key, expected=LAYOUT):
    """A domain folder's usable images: the sorted paths of its readable image files, or the Records of
    its TFRecord shards. One line if there are none, or both kinds."""
    images, shards = folder_files(folder, expected)
    if images and shards:
        raise UsageError(f"{folder}: holds both image files and TFRecord shards, expected one kind ({expected})")
    found = count_records(shards, tfrecord_key, folder) if shards else usable_images(images)
    if not len(found):
        raise UsageError(f"{folder}: {'no readable images' if images or shards else 'holds no images'} ({expected})")
    return found


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


def _domain_stream(images, image_size, seed, deterministic, skip):
    """One domain's endless augmented images: the files reshuffled every epoch (TFRecords: see
    _record_stream), the n-th image of the stream cropped and flipped with the seed (seed, n), so the
    stream depends on `seed` alone; the first `skip` images are passed over as file names, never decoded."""
    if isinstance(images, Records):
        items = _record_stream(images, seed, deterministic, skip)
        key = images.key
        read = lambda record: tf.io.parse_single_example(  # noqa: E731
            record, {key: tf.io.VarLenFeature(tf.string)})[key].values[0]
    else:
        files = tf.data.Dataset.from_tensor_slices([os.fsencode(path) for path in images])  # any file name
        items = files.shuffle(len(images), seed=seed, reshuffle_each_iteration=True).repeat().enumerate().skip(skip)
        read = tf.io.read_file
    load_size = load_size_for(image_size)
    return items.map(
        lambda index, item: preprocess_train(decode_image(read(item)), image_size,
                                             tf.stack([tf.constant(seed, tf.int64), index]), load_size),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _record_stream(records, seed, deterministic, skip):
    """(n, serialized record) of _domain_stream for TFRecord shards, which cannot be read at random:
    epoch e reads the shards in an order drawn from (seed, e), interleaved, leaving out the bad records,
    and permutes each window of SHUFFLE_WINDOW records with a seed drawn from (seed, e) too. Each epoch
    depends on its number alone, so a resumed stream starts at its epoch and skips within it only
    (reading records, not decoding them). Stateless seeds throughout: Dataset.shuffle cannot take a
    seed computed in the pipeline."""
    shards = tf.constant([os.fsencode(shard) for shard in records.shards])
    lengths = tf.constant(records.lengths, tf.int64)
    per_shard = 2 ** 32  # bad records as shard * per_shard + index; -1 keeps the tensor from being empty
    bad = tf.constant([shard * per_shard + index for shard, index in records.bad] + [-1], tf.int64)

    def shard_records(shard):
        read = tf.data.TFRecordDataset(shards[shard]).take(lengths[shard]).enumerate()
        good = read.filter(lambda index, _: tf.reduce_all(bad != shard * per_shard + index))
        return good.map(lambda _, record: record)

    def permuted(window_seed, window):
        return tf.gather(window, tf.random.experimental.stateless_shuffle(tf.range(tf.size(window)), window_seed))

    def epoch(number):
        epoch_seed = tf.stack([tf.constant(seed, tf.int64), number])
        order = tf.random.experimental.stateless_shuffle(tf.range(len(records.shards), dtype=tf.int64), epoch_seed)
        windows = (tf.data.Dataset.from_tensor_slices(order)
                   .interleave(shard_records, cycle_length=min(len(records.shards), INTERLEAVED_SHARDS),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
                   .batch(SHUFFLE_WINDOW).enumerate())
        return windows.map(lambda index, window: permuted(
            tf.random.experimental.stateless_fold_in(epoch_seed, index), window)).unbatch()

    first_epoch, within = divmod(skip, len(records))
    return tf.data.Dataset.counter(first_epoch).flat_map(epoch).skip(within).enumerate(start=skip)


def train_images(dataset):
    """The usable images of the training folders of `dataset` (a Folders, or a DATAROOT in the standard
    layout) as (domain A, domain B), each domain_images' answer; one line if either has none."""
    folders = dataset if isinstance(dataset, Folders) else domain_folders(Config(dataroot=dataset))
    if folders.dataroot and not os.path.isdir(folders.dataroot):
        raise UsageError(f"--dataroot {folders.dataroot}: not a folder ({LAYOUT})")
    return folders.images("train", "A"), folders.images("train", "B")


def train_dataset(train_paths, image_size, batch_size, seed=None, start_step=0):
    """Endless batches of (real_a, real_b) from train_images' answer, each domain shuffled on its own;
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


def load_images(images, image_size, count=None):
    """The first `count` (default: all) of domain_images' answer (image paths or Records),
    test-preprocessed, as one float32 array in [-1, 1]."""
    encoded = record_images(images, count) if isinstance(images, Records) else map(read_bytes, images[:count])
    return np.stack([preprocess_test(decode_image(data), image_size).numpy() for data in encoded])


def with_test_fallback(folders):
    """`folders` with each test folder that cannot serve (none given and no DATAROOT, or DATAROOT's is
    missing or holds no files) replaced by the domain's training folder, said once in an INFO line: the
    run's sample grids and --eval-every scores then read the training images, from the first step on."""
    replaced = {}
    for domain in "AB":
        test, train = folders.folder("test", domain), folders.folder("train", domain)
        if test == train:
            why = ""
        elif f"test_{domain.lower()}" in folders.given or (os.path.isdir(test) and any(folder_files(test))):
            continue  # the user's own test folder (read as given), or DATAROOT's with files
        else:
            why = f" ({test} {'holds no images' if os.path.isdir(test) else 'is missing'})"
        replaced[f"test_{domain.lower()}"] = train
        log.info("no test folder for domain %s%s: sample grids and evaluation read the training folder %s",
                 domain, why, train)
    return dataclasses.replace(folders, **replaced)


def test_images(folders, domain, image_size, count):
    """The first `count` usable test images of a domain (a Folders' after with_test_fallback)."""
    return load_images(folders.images("test", domain), image_size, count)


def image_files(images):
    """[file name, size] of each image file or shard of domain_images' answer: what a run and the domain
    classifier record of a dataset, to know it in another folder (not by names alone: another's 000.png)."""
    return sorted([os.path.basename(p), os.path.getsize(p)] for p in (images.shards if isinstance(images, Records)
                                                                      else images))


def check_distinct_domains(folders, train_paths):
    """Two domains that are one folder (a symlink, the same --train-a and --train-b) are refused; two
    folders that hold the same files (names and bytes) are a WARNING (a CycleGAN between them learns the identity)."""
    a, b = folders.train_a, folders.train_b
    if os.path.realpath(a) == os.path.realpath(b):
        raise UsageError(f"{a} and {b}: domains A and B are the same folder ({os.path.realpath(a)}); "
                         "a CycleGAN translates between two different sets of images")
    paths = [images.shards if isinstance(images, Records) else images for images in train_paths]
    if image_files(train_paths[0]) == image_files(train_paths[1]) and all(  # reads the bytes of same-size files only
            filecmp.cmp(p, q, shallow=False) for p, q in zip(*paths)):
        log.warning("%s and %s hold the same %d files: a CycleGAN between them learns nothing but the identity",
                    a, b, len(paths[0]))
