"""What generate.py translates: every input at its full resolution and name, matching the generator on
the padded image, from a run's files or explicit model files, into a folder or a zip (what it never
writes over is test_generate_safety.py's)."""
import os
import re
import zipfile

import imageio.v3 as iio
import numpy as np
import pytest

import cli
import generate
import inference

from conftest import cli_error, model_options, write_images


def test_outputs_keep_names_and_full_resolution_and_a_grid_is_drawn(trained_run, tmp_path):
    inputs = tmp_path / "in"
    write_images(str(inputs), 1, size=(37, 61), seed=1)
    write_images(str(inputs / "x"), 0)
    iio.imwrite(inputs / "gray.jpg", np.tile(np.arange(50, dtype=np.uint8) * 4, (44, 1)))
    iio.imwrite(inputs / "wide.bmp", np.zeros((20, 90, 3), np.uint8))
    (inputs / "readme.txt").write_text("not an image")
    output = tmp_path / "out"
    written, grid = generate.generate(**generate.resolve(generate.build_parser().parse_args(
        ["--run-dir", trained_run, "--direction", "BtoA", "--input", str(inputs), "--output", str(output)])))
    assert sorted(os.listdir(output)) == [generate.MANIFEST, "gray.jpg", "img000.png", "wide.bmp"]
    assert iio.imread(output / "img000.png").shape == (37, 61, 3)
    assert iio.imread(output / "gray.jpg").shape == (44, 50, 3)
    assert iio.imread(output / "wide.bmp").shape == (20, 90, 3)
    assert grid == str(output) + "_grid.png"
    assert iio.imread(grid).shape == (3 * 250, 3 * 250, 3)  # 3 images x (input | translated | reconstructed)


@pytest.mark.slow
def test_tiny_and_unreadable_images_in_a_real_process(trained_run, scripts, tmp_path):
    """Sides of 1 to 5 px translate at their own size; a broken file is one WARNING line; progress on a
    pipe is plain lines."""
    inputs = tmp_path / "in"
    write_images(str(inputs), 1, size=(24, 24))
    for height, width in ((4, 4), (1, 3), (5, 30)):
        iio.imwrite(inputs / f"tiny_{height}x{width}.png", np.full((height, width, 3), 200, np.uint8))
    (inputs / "broken.png").write_bytes(b"not a PNG")
    result = scripts.run("generate.py", *model_options(trained_run), "--input", inputs, "--output", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert f"WARNING: skipping {inputs / 'broken.png'}: not a readable image" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr
    for name, shape in (("img000.png", (24, 24, 3)), ("tiny_4x4.png", (4, 4, 3)), ("tiny_1x3.png", (1, 3, 3)),
                        ("tiny_5x30.png", (5, 30, 3))):
        assert iio.imread(tmp_path / "out" / name).shape == shape
    assert not (tmp_path / "out" / "broken.png").exists()
    progress = [line for line in result.stdout.splitlines() if line.startswith("image ")]
    assert len(progress) == 1 and re.fullmatch(r"image 4/4  \S+ s/image  took \d+:\d\d:\d\d", progress[0])
    assert not set("\r\b\x1b") & set(result.stdout)


def test_translation_matches_the_generator_on_the_padded_image(trained_run):
    generator = inference.load_generator(os.path.join(trained_run, "generator_ab.keras"))
    image = np.random.default_rng(0).uniform(-1, 1, (30, 42, 3)).astype("float32")
    padded, _ = inference.pad_to_multiple(image)
    assert padded.shape == (32, 44, 3)
    expected = generator.predict_on_batch(padded[None])[0, :30, :42]
    same_size = np.random.default_rng(1).uniform(-1, 1, (30, 42, 3)).astype("float32")
    results = inference.translate_images(generator, [image, same_size, image[:28, :40]], batch_size=2)
    np.testing.assert_allclose(results[0], expected, atol=1e-5)
    assert [r.shape for r in results] == [(30, 42, 3), (30, 42, 3), (28, 40, 3)]


def test_tiny_images_match_the_generator_on_their_padded_form(trained_run):
    generator = inference.load_generator(os.path.join(trained_run, "generator_ab.keras"))
    tiny = np.random.default_rng(2).uniform(-1, 1, (3, 5, 3)).astype("float32")
    padded, size = inference.pad_to_multiple(tiny)
    assert padded.shape == (8, 8, 3) and size == (3, 5)
    np.testing.assert_array_equal(padded[:3, :5], tiny)
    np.testing.assert_array_equal(padded[3:, :5], np.broadcast_to(tiny[2:3], (5, 5, 3)))  # edge-padded
    expected = generator.predict_on_batch(padded[None])[0, :3, :5]
    np.testing.assert_allclose(inference.translate_images(generator, [tiny])[0], expected, atol=1e-5)


def test_a_folder_of_unreadable_images_is_one_line_and_no_output_folder(trained_run, scripts, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.png").write_bytes(b"not a PNG")
    (inputs / "b.jpg").write_bytes(b"")
    result = scripts.run("generate.py", *model_options(trained_run), "--input", inputs, "--output", tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"generate.py: error: {inputs}: no readable images (every .jpg/.png/.bmp there failed to decode)"
    assert sorted(os.listdir(tmp_path)) == ["in"]  # no output folder, no grid


def test_run_files_give_the_run_defaults(trained_run, dataset):
    settings = generate.run_files(trained_run)
    assert settings == dict(generator=os.path.join(trained_run, "generator_ab.keras"),
                            reverse_generator=os.path.join(trained_run, "generator_ba.keras"),
                            input=os.path.join(dataset, "testA"),
                            output=os.path.join(trained_run, "generated", "AtoB"), direction="AtoB")
    explicit = generate.resolve(generate.build_parser().parse_args(
        ["--run-dir", trained_run, "--direction", "BtoA", "--output", "elsewhere", "--grid-count", "2"]))
    assert explicit == dict(generator=os.path.join(trained_run, "generator_ba.keras"),
                            reverse_generator=os.path.join(trained_run, "generator_ab.keras"),
                            input=os.path.join(dataset, "testB"), output="elsewhere", direction="BtoA",
                            batch_size=inference.TRANSLATE_BATCH, grid_count=2, overwrite=False, image_format=None)


def test_a_runs_test_folder_of_tfrecord_shards_says_to_give_input(trained_run, tmp_path):
    import json
    from config import Config, as_json

    (tmp_path / "data" / "testA").mkdir(parents=True)
    (tmp_path / "data" / "testA" / "photo00-1.tfrec").write_bytes(b"")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(as_json(Config(dataroot=str(tmp_path / "data")))))
    assert cli_error(generate.main, ["--run-dir", str(tmp_path / "run"), *model_options(trained_run)]) == (
        f"generate.py: error: {tmp_path / 'data' / 'testA'}: holds TFRecord shards (photo00-1.tfrec), expected a "
        "folder of .jpg/.png/.bmp images; give --input a folder of images")


def test_explicit_model_files_work_without_a_run(trained_run, dataset, tmp_path):
    written, grid = generate.generate(os.path.join(trained_run, "generator_ab.keras"),
                                      os.path.join(dataset, "testA"), str(tmp_path / "o"))
    assert len(written) == 3 and grid is None


def test_not_a_model_file_is_a_one_line_error(tmp_path):
    bogus = tmp_path / "fake.keras"
    bogus.write_bytes(b"PK not really a zip")
    with pytest.raises(cli.UsageError, match="fake.keras: not a Keras model file"):
        inference.load_generator(str(bogus))
    with pytest.raises(cli.UsageError, match="no such model file"):
        inference.load_generator(str(tmp_path / "missing.keras"))


@pytest.mark.slow
def test_a_zip_of_jpegs_holds_one_per_input_at_its_resolution(trained_run, scripts, tmp_path):
    inputs = tmp_path / "in"
    write_images(str(inputs), 2, size=(37, 61), seed=1)
    iio.imwrite(inputs / "wide.bmp", np.zeros((20, 90, 3), np.uint8))
    iio.imwrite(inputs / "photo.jpg", np.full((30, 30, 3), 99, np.uint8))
    result = scripts.run("generate.py", *model_options(trained_run), "--input", "in", "--format", "jpg", "--zip", "out.zip",
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "translated 4 images into out.zip" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["in", "out.zip", "out_grid.png"]  # no output folder, no temporary
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == ["img000.jpg", "img001.jpg", "photo.jpg", "wide.jpg"]
        encoded = {name: archive.read(name) for name in archive.namelist()}
    assert all(data[:3] == b"\xff\xd8\xff" for data in encoded.values())  # JPEG, also where the input was not
    shapes = {name: iio.imread(data).shape for name, data in encoded.items()}
    assert shapes == {"img000.jpg": (37, 61, 3), "img001.jpg": (37, 61, 3), "photo.jpg": (30, 30, 3),
                      "wide.jpg": (20, 90, 3)}
    assert iio.imread(tmp_path / "out_grid.png").shape == (4 * 250, 3 * 250, 3)  # 4 inputs x 3 columns


def test_format_png_renames_outputs_and_refuses_two_inputs_sharing_a_name(trained_run, tmp_path):
    inputs = tmp_path / "in"
    write_images(str(inputs), 1, size=(24, 24))
    iio.imwrite(inputs / "photo.jpg", np.full((16, 20, 3), 99, np.uint8))
    written, _ = generate.generate(os.path.join(trained_run, "generator_ab.keras"), str(inputs), str(tmp_path / "out"),
                                   image_format="png")
    assert sorted(os.path.basename(path) for path in written) == ["img000.png", "photo.png"]
    assert iio.imread(tmp_path / "out" / "photo.png").shape == (16, 20, 3)
    assert (tmp_path / "out" / "photo.png").read_bytes()[:4] == b"\x89PNG"
    iio.imwrite(inputs / "img000.jpg", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(cli.UsageError, match=f"--format png: {inputs / 'img000.jpg'} and {inputs / 'img000.png'} "
                                             "would both be written as img000.png"):
        generate.main(["--generator", os.path.join(trained_run, "generator_ab.keras"), "--input", str(inputs),
                       "--zip", str(tmp_path / "new.zip"), "--format", "png"])
    assert not (tmp_path / "new.zip").exists()


def test_a_zip_replaces_the_runs_default_output_folder(trained_run):
    settings = generate.resolve(generate.build_parser().parse_args(
        ["--run-dir", trained_run, "--zip", "images.zip", "--format", "jpg"]))
    assert "output" not in settings
    assert (settings["zip_path"], settings["image_format"]) == ("images.zip", "jpg")
    with pytest.raises(cli.UsageError, match=r"give --run-dir, or all of --generator, --input and --output \(or --zip\)"):
        generate.resolve(generate.build_parser().parse_args(["--generator", "g.keras", "--zip", "images.zip"]))


def test_links_to_nothing_in_the_input_folder_are_skipped(trained_run, tmp_path):
    """A link loop (named like an image or not) and a dangling link are no images: skipped, as train.py's
    data.usable_images skips what does not decode."""
    photos = tmp_path / "photos"
    write_images(str(photos), 2, size=(24, 24))
    (photos / "loop").symlink_to("loop")
    (photos / "loop.png").symlink_to("loop.png")
    (photos / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    written, _ = generate.generate(os.path.join(trained_run, "generator_ab.keras"), str(photos), str(tmp_path / "out"))
    assert written == [str(tmp_path / "out" / "img000.png"), str(tmp_path / "out" / "img001.png")]
    assert sorted(os.listdir(tmp_path / "out")) == [generate.MANIFEST, "img000.png", "img001.png"]


def test_grid_cells_are_bounded_whatever_the_image_sizes(trained_run, tmp_path, capsys):
    """A 4000-pixel-long image is drawn in a cell of samples.CELL_PIXELS, not padded to a 4000x4000 square
    (192 MB a cell: a grid of large photos ran out of memory); numpy's allocations are what tracemalloc sees."""
    import tracemalloc

    import samples

    long = np.zeros((12, 4000, 3), np.float32)
    tracemalloc.start()
    try:
        grid = samples.grid_image([[long, long[:, :8]], [long, long[:, :8]]])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert grid.shape == (2 * 250, 2 * 250, 3)
    assert peak < 40 * 2 ** 20, peak
    assert samples.fit_to_cell(long, samples.CELL_PIXELS).shape == (256, 256, 3)

    photos = tmp_path / "photos"
    write_images(str(photos), 1, size=(8, 1200))
    generate.main([*model_options(trained_run), "--input", str(photos), "--output", str(tmp_path / "out")])
    assert iio.imread(tmp_path / "out_grid.png").shape == (250, 3 * 250, 3)
    assert capsys.readouterr().out.splitlines()[-1] == f"sample grid: {tmp_path / 'out'}_grid.png"


def test_a_grid_that_fails_is_a_warning_and_the_translations_stay(trained_run, tmp_path, monkeypatch, caplog, capsys):
    """The grid is optional: running out of memory there (numpy's MemoryError, as a 3000x3000 and a
    5000x20 image did before cells were bounded) is one WARNING line, exit 0, the translations kept."""
    photos = tmp_path / "photos"
    write_images(str(photos), 2, size=(24, 24))

    def out_of_memory(*args):
        raise MemoryError("Unable to allocate 286. MiB for an array with shape (5000, 5000, 3) and data type float32")
    monkeypatch.setattr(generate.samples, "grid_image", out_of_memory)
    generate.main([*model_options(trained_run), "--input", str(photos), "--output", str(tmp_path / "out")])
    assert [record.getMessage() for record in caplog.records if record.levelname == "WARNING"] == [
        f"sample grid {tmp_path / 'out'}_grid.png not written (MemoryError: Unable to allocate 286. MiB for an array "
        "with shape (5000, 5000, 3) and data type float32); the 2 translations are written whole"]
    assert capsys.readouterr().out.splitlines()[-1] == f"translated 2 images into {tmp_path / 'out'}"  # no grid line
    assert sorted(os.listdir(tmp_path)) == ["out", "photos"]  # no grid, no temporary, no lock
    assert sorted(os.listdir(tmp_path / "out")) == [generate.MANIFEST, "img000.png", "img001.png"]
    assert iio.imread(tmp_path / "out" / "img001.png").shape == (24, 24, 3)


def test_help_says_each_default_once():
    text = " ".join(generate.build_parser().format_help().split())
    assert "images in the sample grid, 0 for none (default: 6)" in text
    assert "(0: no grid)" not in text
    for default in ("(holds config.json and the generators; default: none, give --generator, --input and --output)",
                    "forward generator (default: the run's, for DIRECTION)",
                    "backward generator of the grid (default: the run's other one)",
                    "instead of an output folder (the grid: FILE_grid.png, FILE without .zip)"):
        assert default in text
