import logging
import os
import shutil
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

import cli
import data
import demo_data
import image_io
from config import Config

from conftest import make_dataset, write_images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_list_images_takes_jpg_png_bmp_in_any_case_and_ignores_the_rest(tmp_path):
    for name in ("a.JPG", "b.jpeg", "c.png", "d.bmp", "notes.txt", "e.gif", ".DS_Store"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    names = [os.path.basename(p) for p in data.list_images(str(tmp_path))]
    assert names == ["a.JPG", "b.jpeg", "c.png", "d.bmp"]


def test_grayscale_and_rgba_become_rgb(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgba = np.dstack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30, 40)])
    iio.imwrite(tmp_path / "gray.png", gray)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    iio.imwrite(tmp_path / "gray.bmp", gray)
    for name in ("gray.png", "gray.bmp"):
        image = data.decode_image(open(tmp_path / name, "rb").read()).numpy()
        assert image.shape == (8, 8, 3)
        np.testing.assert_array_equal(image[..., 1], gray)
    image = data.decode_image(open(tmp_path / "rgba.png", "rb").read()).numpy()
    assert image.shape == (8, 8, 3) and image[0, 0].tolist() == [10, 20, 30]


def test_unreadable_image_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    good = write_images(str(tmp_path), 2)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with caplog.at_level(logging.WARNING, logger="cyclegan"):
        usable = data.usable_images(data.list_images(str(tmp_path)))
    assert usable == [p for p in sorted(good + [str(bad)]) if p != str(bad)]
    assert str(bad) in caplog.text


@pytest.mark.parametrize("layout, message", [
    ("missing_root", "not a folder"),
    ("no_trainB", "trainB: no such folder"),
    ("empty_trainA", "trainA: holds no images"),
    ("unreadable_trainA", "trainA: no readable images"),
    ("file_for_trainA", "trainA: is a file"),
])
def test_bad_dataroot_gives_one_line_naming_the_path_and_layout(tmp_path, layout, message):
    root = tmp_path / "set"
    if layout != "missing_root":
        make_dataset(root, counts=(2, 2, 1, 1), size=(8, 8))
    if layout == "no_trainB":
        for f in (root / "trainB").iterdir():
            f.unlink()
        (root / "trainB").rmdir()
    if layout in ("empty_trainA", "unreadable_trainA"):
        for f in (root / "trainA").iterdir():
            f.unlink()
    if layout == "unreadable_trainA":
        (root / "trainA" / "broken.png").write_bytes(b"not a png")
    if layout == "file_for_trainA":
        for f in (root / "trainA").iterdir():
            f.unlink()
        (root / "trainA").rmdir()
        (root / "trainA").write_text("oops")
    with pytest.raises(cli.UsageError) as error:
        data.train_dataset(data.train_images(str(root)), 32, 1)
    text = str(error.value)
    assert message in text and "expected DATAROOT/trainA/" in text and "\n" not in text


def test_images_of_kinds_not_read_are_named_once_and_a_folder_of_only_those_says_so(tmp_path, caplog):
    """.webp, .gif, .tif ... are skipped in one WARNING per folder (not in silence), and a folder of
    nothing else is not called unreadable: what is read is named."""
    root = make_dataset(tmp_path / "set", counts=(2, 2, 1, 1), size=(36, 36))
    for name in ("b.webp", "a.WEBP", "c.gif"):
        (tmp_path / "set" / "trainA" / name).write_bytes(b"an image of a kind not read")
    with caplog.at_level(logging.WARNING, logger="cyclegan"):
        for _ in range(2):  # a script looks at a folder more than once: said once
            assert len(data.train_images(root)[0]) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"skipping 3 .gif/.webp files in {root}/trainA (e.g. a.WEBP): only .jpg, .png and .bmp images are read"]
    for path in data.list_images(f"{root}/trainA"):
        os.remove(path)
    with pytest.raises(cli.UsageError, match=f"^{root}/trainA: holds no images"):
        data.train_images(root)


def test_a_test_folder_that_is_missing_or_holds_no_images_gives_way_to_the_training_folder(tmp_path, caplog):
    root = make_dataset(tmp_path / "set", counts=(2, 2, 0, 1), size=(36, 36))
    shutil.rmtree(tmp_path / "set" / "testB")
    with caplog.at_level(logging.INFO, logger="cyclegan"):
        folders = data.with_test_fallback(data.domain_folders(Config(dataroot=root)))
    assert (folders.test_a, folders.test_b) == (f"{root}/trainA", f"{root}/trainB")
    assert [r.getMessage() for r in caplog.records] == [
        f"no test folder for domain {d} ({root}/test{d} {why}): sample grids and evaluation read the training "
        f"folder {root}/train{d}" for d, why in (("A", "holds no images"), ("B", "is missing"))]


def test_a_photo_is_read_the_way_up_its_exif_orientation_says(tmp_path):
    """As viewers (and Pillow's exif_transpose) show it: a phone stores a portrait photo sideways with
    orientation 6, and generate.py's translation, written without EXIF, must be seen the same way up."""
    from PIL import Image, ImageOps

    stored = np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        path = tmp_path / f"photo{orientation}.jpg"
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(stored).save(path, exif=exif.tobytes())
        decoded = Image.fromarray(data.decode_image(data.read_bytes(path)).numpy())  # as stored, decoded as read
        decoded.info["exif"] = exif.tobytes()
        shown = data.to_unit_range(np.asarray(ImageOps.exif_transpose(decoded))).numpy()
        read = image_io.read_image(str(path))
        assert read.shape == shown.shape == ((40, 20, 3) if orientation >= 5 else (20, 40, 3)), orientation
        assert np.array_equal(read, shown), orientation


def test_load_size_follows_the_reference():
    assert data.load_size_for(256) == 286
    assert data.load_size_for(128) == 143


def test_training_batches_are_cropped_flipped_and_in_range(tmp_path):
    root = make_dataset(tmp_path, counts=(4, 7, 1, 1), size=(50, 60))
    dataset, steps_per_epoch = data.train_dataset(data.train_images(root), 32, 2, seed=0)
    assert steps_per_epoch == 7 // 2
    real_a, real_b = next(iter(dataset))
    assert real_a.shape == (2, 32, 32, 3) and real_b.shape == (2, 32, 32, 3)
    for batch in (real_a.numpy(), real_b.numpy()):
        assert batch.min() >= -1.0 and batch.max() <= 1.0 and batch.std() > 0.05


def test_random_flip_and_crop_vary_and_test_transform_does_not():
    ramp = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 6, (40, 1, 3))
    crops = [data.preprocess_train(ramp, 32, seed=(0, index)).numpy() for index in range(40)]
    left_to_right = [c[0, -1, 0] > c[0, 0, 0] for c in crops]
    assert any(left_to_right) and not all(left_to_right)
    assert len({round(float(c[0, 0, 0]), 3) for c in crops}) > 2
    first, second = data.preprocess_test(ramp, 32).numpy(), data.preprocess_test(ramp, 32).numpy()
    np.testing.assert_array_equal(first, second)
    assert first.shape == (32, 32, 3) and first[0, -1, 0] > first[0, 0, 0]


def constant_images(folder, values):
    os.makedirs(folder, exist_ok=True)
    for index, value in enumerate(values):
        iio.imwrite(os.path.join(folder, f"{index}.png"), np.full((36, 36, 3), value, np.uint8))


def test_domains_are_shuffled_independently_every_epoch(tmp_path):
    """Each image is one flat colour, so a batch tells which file it came from."""
    values = [20 * (i + 1) for i in range(6)]
    constant_images(tmp_path / "trainA", values)
    constant_images(tmp_path / "trainB", values)
    dataset, steps_per_epoch = data.train_dataset(data.train_images(str(tmp_path)), 32, 1, seed=3)
    assert steps_per_epoch == 6
    stream = iter(dataset)
    orders = {"A": [], "B": []}
    for _ in range(3 * steps_per_epoch):
        real_a, real_b = next(stream)
        for domain, batch in (("A", real_a), ("B", real_b)):
            orders[domain].append(int(round((float(batch[0, 0, 0, 0]) + 1) * 127.5)))
    for domain in "AB":
        epochs = [orders[domain][i:i + 6] for i in range(0, 18, 6)]
        assert all(sorted(e) == values for e in epochs), "every image once per epoch"
        assert len({tuple(e) for e in epochs}) > 1, "reshuffled between epochs"
    assert orders["A"] != orders["B"], "A and B are not paired"


def test_demo_dataset_is_unpaired_and_carries_ground_truth(tmp_path):
    root = demo_data.build_demo_dataset(str(tmp_path / "demo"), train_per_domain=12, test_per_domain=4)
    names = {f: sorted(os.listdir(os.path.join(root, f))) for f in ("trainA", "trainB", "testA", "testB", "testA_gt")}
    assert [len(names[f]) for f in ("trainA", "trainB", "testA", "testB")] == [12, 12, 4, 4]
    assert names["testA_gt"] == names["testA"]
    read = lambda folder, name: iio.imread(os.path.join(root, folder, name))
    for name in names["testA"]:
        photo, truth = read("testA", name), read("testA_gt", name)
        assert truth.shape == photo.shape == (demo_data.DEMO_CROP, demo_data.DEMO_CROP, 3)
        np.testing.assert_array_equal(truth, demo_data.paint(photo))
        assert np.abs(truth.astype(int) - photo.astype(int)).mean() > 20
    paintings_of_a = {demo_data.paint(read("trainA", n)).tobytes() for n in names["trainA"]}
    assert not paintings_of_a & {read("trainB", n).tobytes() for n in names["trainB"]}
    assert demo_data.build_demo_dataset(root) == root  # reused, not rebuilt


def test_demo_dataset_never_replaces_a_folder_that_is_not_one(tmp_path):
    """main.py --dataroot pointed at the user's own folder: refused, the folder untouched."""
    mine = tmp_path / "photos"
    write_images(str(mine), 2, size=(16, 16))
    before = sorted(os.listdir(mine))
    with pytest.raises(cli.UsageError, match="is not a demo dataset"):
        demo_data.build_demo_dataset(str(mine), train_per_domain=2, test_per_domain=1)
    assert sorted(os.listdir(mine)) == before and not os.path.exists(f"{mine}.partial")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert demo_data.build_demo_dataset(str(empty), train_per_domain=2, test_per_domain=1) == str(empty)
    assert len(os.listdir(empty / "testA_gt")) == 1


def test_a_file_name_that_is_not_utf8_is_read_everywhere(tmp_path):
    """os.listdir gives b'caf\xe9.png' as a surrogate escape, which tf.io.read_file cannot take."""
    make_dataset(tmp_path, counts=(2, 2, 1, 1), size=(36, 36))
    pixels = np.full((36, 36, 3), 200, np.uint8)
    for folder in (b"trainA", b"testA"):
        with open(os.path.join(os.fsencode(tmp_path), folder, b"caf\xe9.png"), "wb") as f:
            f.write(iio.imwrite("<bytes>", pixels, extension=".png"))
    cafe = os.path.join(str(tmp_path), "testA", os.fsdecode(b"caf\xe9.png"))
    assert data.list_images(str(tmp_path / "testA")) == [cafe, str(tmp_path / "testA" / "img000.png")]
    assert len(data.domain_images(str(tmp_path / "trainA"), "image")) == 3
    assert data.usable_images([cafe]) == [cafe]
    np.testing.assert_allclose(image_io.read_image(cafe), pixels / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_allclose(data.load_images([cafe], 32), np.full((1, 32, 32, 3), 200 / 127.5 - 1.0), atol=1e-4)
    assert data.test_images(data.domain_folders(Config(dataroot=str(tmp_path))), "A", 32, 2).shape == (2, 32, 32, 3)


@pytest.mark.slow
def test_libjpeg_complaints_stay_off_the_terminal_and_the_file_is_named(tmp_path):
    """A JPEG cut inside its header makes libjpeg print "Improper call to JPEG library in state 201"
    on file descriptor 2 when TensorFlow decodes it: a real process shows only the warning."""
    write_images(str(tmp_path), 1)
    iio.imwrite(tmp_path / "whole.jpg", np.zeros((40, 40, 3), np.uint8))
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:300])
    script = ("import os, cli, data; cli.setup_logging(); "
              f"print(len(data.usable_images(data.list_images({str(tmp_path)!r})))); "
              "os.write(2, b'stderr is back\\n')")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    assert result.stderr.splitlines() == [f"WARNING: skipping {tmp_path / 'cut.jpg'}: not a readable image",
                                          "stderr is back"]


def test_domains_warned_of_as_the_same_files_are_copies_not_files_of_the_same_names_and_sizes(tmp_path, caplog):
    """Uncompressed BMPs of one size all have the same byte size: only identical bytes are the identity."""
    write_images(str(tmp_path / "a"), 3, extension="bmp", seed=0)
    write_images(str(tmp_path / "b"), 3, extension="bmp", seed=1)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    sizes = [[os.path.getsize(path) for path in data.list_images(str(tmp_path / folder))] for folder in "ab"]
    assert sizes[0] == sizes[1]  # and the same names
    for other, warnings in (("b", 0), ("copy", 1)):
        folders = data.domain_folders(Config(train_a=str(tmp_path / "a"), train_b=str(tmp_path / other)))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cyclegan"):
            data.check_distinct_domains(folders, data.train_images(folders))
        assert caplog.text.count("hold the same 3 files: a CycleGAN between them learns nothing but the identity") \
            == warnings
