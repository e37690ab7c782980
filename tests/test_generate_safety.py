"""generate.py never writes over what the user owns: inputs refused as outputs in every spelling, files
it did not write kept unless --overwrite, a zip replaced whole or not at all, a full disk, a second
generate.py on one output, reruns, and what a killed one left."""
import errno
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import imageio.v3 as iio
import pytest

import checkpoints
import cli
import generate
import inference

from conftest import cli_error, model_options, write_images


def folder_bytes(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow  # a real process
def test_output_into_the_input_folder_is_refused_in_a_real_process(trained_run, scripts, tmp_path):
    photos = tmp_path / "photos"
    write_images(str(photos), 2, size=(24, 24))
    before = folder_bytes(tmp_path)
    result = scripts.run("generate.py", *model_options(trained_run), "--input", "photos", "--output", "./photos/",
                         "--overwrite", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        "generate.py: error: --output ./photos/ is the input folder: the translations would replace the images"
    assert folder_bytes(tmp_path) == before


@pytest.mark.parametrize("link", ["folder", "file", "hard link"])
def test_outputs_that_are_the_input_files_are_refused_even_with_overwrite(trained_run, tmp_path, link):
    photos = tmp_path / "photos"
    write_images(str(photos), 2, size=(24, 24))
    output = tmp_path / "out"
    if link == "folder":
        output.symlink_to(photos)
        expected = "is the input folder"
    else:
        output.mkdir()
        (output / "img001.png").symlink_to(photos / "img001.png") if link == "file" else \
            os.link(photos / "img001.png", output / "img001.png")
        expected = f"{output / 'img001.png'} is an input image, it would be replaced"
    before = folder_bytes(tmp_path)
    with pytest.raises(cli.UsageError, match=expected):
        generate.main([*model_options(trained_run), "--input", str(photos), "--output", str(output), "--overwrite"])
    assert folder_bytes(tmp_path) == before


def test_files_generate_did_not_write_are_kept_unless_overwrite(trained_run, tmp_path):
    photos = tmp_path / "photos"
    write_images(str(photos), 2, size=(24, 24))
    output = tmp_path / "out"
    argv = [*model_options(trained_run), "--input", str(photos), "--output", str(output)]
    output.mkdir()
    (output / "img000.png").write_bytes(b"the user's own picture")
    (output / "img001.png").write_bytes(b"and another")
    assert cli_error(generate.main, argv) == (
        f"generate.py: error: --output {output}: would write over 2 files ({output / 'img000.png'}, "
        f"{output / 'img001.png'}) that generate.py did not write; pass --overwrite to replace, or choose another "
        "output folder")
    assert sorted(os.listdir(output)) == ["img000.png", "img001.png"] and not os.path.exists(generate.grid_path(output))
    (output / "img001.png").unlink()
    (output / "img001.png").mkdir()
    (output / "img001.png" / "keep.txt").write_text("the user's")
    for options in ([], ["--overwrite"]):  # a folder is never replaced, and named as a folder
        assert cli_error(generate.main, argv + options) == (
            f"generate.py: error: --output {output}: 1 folder ({output / 'img001.png'}) where generate.py writes a "
            "file (not replaced, even with --overwrite); choose another output folder")
    assert (output / "img001.png" / "keep.txt").read_text() == "the user's"
    assert (output / "img000.png").read_bytes() == b"the user's own picture"

    shutil.rmtree(output)
    output.mkdir()
    generate.main(argv)
    (output / "img001.png").write_bytes(b"")  # to see it written again
    generate.main(argv)  # its own earlier output: replaced without --overwrite
    assert sorted(os.listdir(output)) == [generate.MANIFEST, "img000.png", "img001.png"]
    assert iio.imread(output / "img001.png").shape == (24, 24, 3)


def test_a_users_file_where_the_grid_goes_is_kept_unless_overwrite(trained_run, tmp_path):
    photos = tmp_path / "photos"
    write_images(str(photos), 2, size=(24, 24))
    grid = tmp_path / "out_grid.png"
    grid.write_bytes(b"someone's poster")
    argv = [*model_options(trained_run), "--input", str(photos), "--output", f"{tmp_path / 'out'}/"]
    with pytest.raises(cli.UsageError, match=f"would write over 1 file \\({grid}\\) that"):
        generate.main(argv)
    assert grid.read_bytes() == b"someone's poster" and not (tmp_path / "out").exists()
    generate.main(argv + ["--overwrite"])
    assert iio.imread(grid).shape == (2 * 250, 3 * 250, 3)
    generate.main(argv)  # now the grid is generate.py's own


def test_an_existing_zip_or_its_grid_is_replaced_only_with_overwrite(trained_run, scripts, tmp_path):
    photos = tmp_path / "photos"
    write_images(str(photos), 2, size=(24, 24))
    target = tmp_path / "sub" / "out.zip"
    target.parent.mkdir()
    target.write_bytes(b"the user's archive")
    argv = [*model_options(trained_run), "--input", str(photos), "--zip", str(target)]
    result = scripts.run("generate.py", *argv)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"generate.py: error: --zip {target}: would write over {target}; pass --overwrite to replace, "
        "or choose another name")
    assert target.read_bytes() == b"the user's archive" and sorted(os.listdir(target.parent)) == ["out.zip"]
    generate.main(argv + ["--overwrite"])
    assert zipfile.ZipFile(target).namelist() == ["img000.png", "img001.png"]
    target.unlink()
    with pytest.raises(cli.UsageError, match=f"would write over {target.parent / 'out_grid.png'}; pass --overwrite"):
        generate.main(argv)  # the grid of the earlier run is there: also kept
    assert not target.exists()
    with pytest.raises(cli.UsageError, match="--zip .*: is a folder"):
        generate.main([*model_options(trained_run), "--input", str(photos), "--zip", str(tmp_path), "--grid-count", "0"])
    with pytest.raises(cli.UsageError, match="give an output folder \\(--output\\) or a zip file \\(--zip\\), "
                                             "one of them"):
        generate.main(argv + ["--output", str(tmp_path / "folder")])


@pytest.mark.parametrize("earlier", [None, b"an earlier complete zip"])
def test_an_interrupted_zip_leaves_no_zip_and_keeps_the_earlier_one(trained_run, tmp_path, monkeypatch, earlier):
    """Stopped (Ctrl-C) while the second of three images is translated: the first is in the temporary
    zip beside the target, which is removed; the target is absent, or still the earlier file."""
    photos = tmp_path / "photos"
    write_images(str(photos), 3, size=(24, 24))
    target = tmp_path / "out.zip"
    if earlier:
        target.write_bytes(earlier)
    translate, calls, seen = inference.translate_images, [], {}

    def interrupted_on_the_second_chunk(*args):
        calls.append(1)
        if len(calls) == 2:
            seen["beside the target"] = sorted(os.listdir(tmp_path))
            raise KeyboardInterrupt
        return translate(*args)

    monkeypatch.setattr(generate, "CHUNK", 1)
    monkeypatch.setattr(inference, "translate_images", interrupted_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        generate.generate(os.path.join(trained_run, "generator_ab.keras"), str(photos), zip_path=str(target),
                          overwrite=True)
    temporary = [name for name in seen["beside the target"] if name.startswith("out.tmp")]
    assert len(temporary) == 1 and temporary[0].endswith(".zip")
    assert sorted(os.listdir(tmp_path)) == (["out.zip", "photos"] if earlier else ["photos"])
    if earlier:
        assert target.read_bytes() == earlier


def dead_pid():
    """The PID of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def disk_full_after(count, write):
    """`write` (a writer of a path) that, after `count` files, writes half a file and fails as a full disk."""
    calls = []

    def writer(path, *args, **kwargs):
        calls.append(path)
        if len(calls) > count:
            with open(path, "wb") as f:
                f.write(b"\x89PNG\r\n\x1a\n half an image")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(path, *args, **kwargs)
    return writer


def test_a_full_disk_leaves_whole_images_listed_and_a_rerun_finishes(trained_run, tmp_path, monkeypatch):
    """The disk fills while the third of four images is written: one line naming it and the folder; the
    two before it are whole and listed in the manifest, nothing else is there; the same command then
    finishes without --overwrite."""
    photos = tmp_path / "photos"
    write_images(str(photos), 4, size=(24, 24))
    output = tmp_path / "out"
    argv = [*model_options(trained_run), "--input", str(photos), "--output", str(output)]
    monkeypatch.setattr(generate.image_io, "write_image", disk_full_after(2, generate.image_io.write_image))
    assert cli_error(generate.main, argv) == (
        f"generate.py: error: {output / 'img002.png'}: could not write (No space left on device); nothing "
        f"half-written is left in {output}/ (2 images written whole so far, listed in {output / generate.MANIFEST}; "
        "run the same command again to finish)")
    assert sorted(os.listdir(output)) == [generate.MANIFEST, "img000.png", "img001.png"]
    assert [iio.imread(output / name).shape for name in ("img000.png", "img001.png")] == [(24, 24, 3)] * 2
    manifest = json.loads((output / generate.MANIFEST).read_text())
    assert (manifest["files"], manifest["writing"]) == (["img000.png", "img001.png"], [])
    assert sorted(os.listdir(tmp_path)) == ["out", "photos"]  # no grid, no lock, no temporary beside

    monkeypatch.undo()
    generate.main(argv)
    assert sorted(os.listdir(output)) == [generate.MANIFEST] + [f"img00{i}.png" for i in range(4)]
    assert json.loads((output / generate.MANIFEST).read_text())["files"] == \
        ["../out_grid.png"] + [f"img00{i}.png" for i in range(4)]


@pytest.mark.parametrize("earlier", [False, True])
def test_a_full_disk_while_writing_a_zip_is_one_line_and_at_the_grid_a_warning(trained_run, tmp_path, monkeypatch,
                                                                              earlier, caplog):
    photos = tmp_path / "photos"
    write_images(str(photos), 3, size=(24, 24))
    target = tmp_path / "sub" / "out.zip"
    target.parent.mkdir()
    if earlier:
        target.write_bytes(b"an earlier zip")
    argv = [*model_options(trained_run), "--input", str(photos), "--zip", str(target), "--overwrite"]

    writestr, calls = zipfile.ZipFile.writestr, []

    def full_on_the_second(archive, name, payload):
        calls.append(name)
        if len(calls) == 2:
            archive.fp.write(b"half an entry")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return writestr(archive, name, payload)
    monkeypatch.setattr(zipfile.ZipFile, "writestr", full_on_the_second)
    assert cli_error(generate.main, argv) == (
        f"generate.py: error: {target}: could not write (No space left on device); nothing half-written is left in "
        f"{target.parent}/ (no zip written{'; the earlier one is unchanged' if earlier else ''})")
    assert sorted(os.listdir(target.parent)) == (["out.zip"] if earlier else [])
    assert not earlier or target.read_bytes() == b"an earlier zip"

    monkeypatch.undo()
    monkeypatch.setattr(generate.samples, "save_grid", disk_full_after(0, generate.samples.save_grid))
    generate.main(argv)  # the grid is optional: a full disk there is a WARNING, and the zip stays
    assert [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING] == [
        f"sample grid {target.parent / 'out_grid.png'} not written (OSError: No space left on device); "
        "the 3 translations are written whole"]
    assert sorted(os.listdir(target.parent)) == ["out.zip"]  # no grid, no half of one
    assert zipfile.ZipFile(target).namelist() == ["img000.png", "img001.png", "img002.png"]


def test_a_second_generate_on_a_busy_output_gets_one_line_and_writes_nothing(trained_run, scripts, tmp_path):
    """This process holds the output's lock (generate.output_lock, as a generate.py writing there): a
    generate.py process started meanwhile ends with one line naming the folder and the holder's PID, exit
    status 1, nothing written; once the lock is let go the output is free, and no lock file is left. The
    same for a zip."""
    photos = tmp_path / "photos"
    write_images(str(photos), 2, size=(24, 24))
    output = tmp_path / "out"
    argv = [*model_options(trained_run), "--input", str(photos), "--output", str(output)]
    with generate.output_lock(str(output)):
        before = folder_bytes(tmp_path)
        assert before[Path(".out.generate.lock")] == f"{os.getpid()}\n".encode()
        result = scripts.run("generate.py", *argv)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1] == (
            f"generate.py: error: --output {output} is in use by another generate.py (PID {os.getpid()}); wait for "
            "it to end, or give another --output")
        assert folder_bytes(tmp_path) == before
    generate.main(argv)
    assert sorted(os.listdir(tmp_path)) == ["out", "out_grid.png", "photos"]

    target = tmp_path / "sub.zip"
    with generate.output_lock(zip_path=str(target)):
        before = folder_bytes(tmp_path)
        assert cli_error(generate.main, [*model_options(trained_run), "--input", str(photos), "--zip", str(target)]) == (
            f"generate.py: error: --zip {target} is in use by another generate.py (PID {os.getpid()}); wait for it "
            "to end, or give another --zip")
        assert folder_bytes(tmp_path) == before
    assert not (tmp_path / ".sub.generate.lock").exists()


def test_two_spellings_of_one_output_share_its_lock_and_its_grid(trained_run, tmp_path):
    """A link to the output folder (or to the folder of a zip) is the same output: while one generate.py
    holds it, a second naming it the other way is one line with the holder's PID, nothing written; both
    spellings draw the one grid beside the real folder."""
    photos, real, zips = tmp_path / "photos", tmp_path / "out", tmp_path / "zips"
    write_images(str(photos), 2, size=(24, 24))
    real.mkdir(), zips.mkdir()
    (tmp_path / "link").symlink_to("out")
    (tmp_path / "ziplink").symlink_to("zips")
    argv = [*model_options(trained_run), "--input", str(photos)]
    for held, other, option in ((dict(output=str(real)), tmp_path / "link", "--output"),
                                (dict(zip_path=str(zips / "a.zip")), tmp_path / "ziplink" / "a.zip", "--zip")):
        with generate.output_lock(**held):
            before = folder_bytes(tmp_path)
            assert cli_error(generate.main, argv + [option, str(other)]) == (
                f"generate.py: error: {option} {other} is in use by another generate.py (PID {os.getpid()}); wait "
                f"for it to end, or give another {option}")
            assert folder_bytes(tmp_path) == before
    generate.main(argv + ["--output", str(tmp_path / "link")])
    assert generate.grid_path(str(tmp_path / "link")) == str(tmp_path / "out_grid.png")
    assert sorted(os.listdir(tmp_path)) == ["link", "out", "out_grid.png", "photos", "ziplink", "zips"]
    generate.main(argv + ["--output", str(real)])  # the same output, its own grid: no --overwrite needed


def test_a_lock_file_removed_by_the_writer_before_is_not_taken_for_the_lock(tmp_path, monkeypatch):
    """A writer that opened the lock file just before the writer holding it removed it (at its end) locks
    the removed file; it must see that and lock the file now at the path, or a third writer would
    lock that one too."""
    lock = tmp_path / ".out.generate.lock"
    opened, real_open = [], os.open

    def open_then_removed(path, *args):
        descriptor = real_open(path, *args)
        if not opened:
            os.remove(path)  # the earlier writer ends
        opened.append(descriptor)
        return descriptor

    monkeypatch.setattr(checkpoints.os, "open", open_then_removed)  # os.open: undone as soon as locked
    with checkpoints.writer_lock(str(lock), "--output out", "generate.py", "give another --output", remove=True):
        monkeypatch.undo()
        assert len(opened) == 2 and lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(cli.UsageError, match="--output out is in use by another generate.py"):
            with checkpoints.writer_lock(str(lock), "--output out", "generate.py", "give another --output"):
                pass
    assert not lock.exists()


def test_a_rerun_says_what_it_replaced_and_another_input_or_generator_needs_overwrite(trained_run, tmp_path, caplog):
    photos, other = Path(os.path.realpath(tmp_path / "photos")), Path(os.path.realpath(tmp_path / "other"))
    write_images(str(photos), 2, size=(24, 24))
    write_images(str(other), 2, size=(24, 24), seed=5)
    output = tmp_path / "out"
    forward = os.path.realpath(os.path.join(trained_run, "generator_ab.keras"))
    argv = ["--generator", forward, "--input", str(photos), "--output", str(output)]
    generate.main(argv)
    manifest = json.loads((output / generate.MANIFEST).read_text())
    assert (manifest["input"], manifest["generator"]) == (str(photos), forward)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", manifest["date"])

    manifest_path = output / generate.MANIFEST  # as a run killed in its last chunk leaves it: img001 being written
    manifest_path.write_text(json.dumps(dict(manifest, files=["img000.png"], writing=["img001.png"])))
    caplog.set_level(logging.INFO, logger="cyclegan")
    generate.main(["--generator", forward, "--input", f"{photos}/", "--output", str(output)])  # the same folder
    assert f"replaced 2 images written by an earlier generate.py on {manifest['date']} from {photos}" in caplog.text

    date = json.loads((output / generate.MANIFEST).read_text())["date"]
    before = folder_bytes(tmp_path)
    backward = os.path.realpath(os.path.join(trained_run, "generator_ba.keras"))
    assert cli_error(generate.main, ["--generator", forward, "--input", str(other), "--output", str(output)]) == (
        f"generate.py: error: --output {output}: holds images that generate.py translated on {date} from another "
        f"input folder ({photos}, now {other}); --overwrite replaces them, or choose another output folder")
    assert cli_error(generate.main, ["--generator", backward, "--input", str(other), "--output", str(output)]) == (
        f"generate.py: error: --output {output}: holds images that generate.py translated on {date} from another "
        f"input folder ({photos}, now {other}) and with another generator ({forward}, now {backward}); "
        "--overwrite replaces them, or choose another output folder")
    assert folder_bytes(tmp_path) == before

    generate.main(["--generator", backward, "--input", str(other), "--output", str(output), "--overwrite"])
    manifest = json.loads((output / generate.MANIFEST).read_text())
    assert (manifest["input"], manifest["generator"], manifest["files"]) == \
        (str(other), backward, ["img000.png", "img001.png"])
    assert (output / "img000.png").read_bytes() != before[Path("out", "img000.png")]


@pytest.mark.slow
def test_temporaries_a_killed_generate_left_are_removed_and_others_kept(trained_run, tmp_path, caplog):
    """Of write_atomically's NAME.tmpPID.EXT beside the output: those of a dead process for a file that
    generate.py writes go, in one INFO line; a live process's, and a user's file that only looks like
    one, stay."""
    photos = tmp_path / "photos"
    write_images(str(photos), 2, size=(24, 24))
    output = tmp_path / "out"
    argv = [*model_options(trained_run), "--input", str(photos), "--output", str(output)]
    generate.main(argv)
    dead, live = dead_pid(), os.getppid()
    stale = [tmp_path / f"out_grid.tmp{dead}.png", output / f".generate.tmp{dead}.json",
             output / f"img001.tmp{dead}.png"]
    kept = [output / f"img000.tmp{live}.png", output / f"notes.tmp{dead}.txt", tmp_path / f"sub.tmp{dead}.zip"]
    for path in stale + kept:
        path.write_bytes(b"half a file, cut by a kill")
    caplog.set_level(logging.INFO, logger="cyclegan")
    generate.main(argv)
    assert f"removed 3 temporary file(s) left by a killed generate.py: {', '.join(map(str, stale))}" in caplog.text
    assert [path.exists() for path in stale + kept] == [False] * 3 + [True] * 3

    caplog.clear()
    target = tmp_path / "sub.zip"
    stale = [tmp_path / f"sub.tmp{dead}.zip", tmp_path / f"sub_grid.tmp{dead}.png"]
    kept = [tmp_path / f"sub.tmp{live}.zip"]
    for path in stale[1:] + kept:
        path.write_bytes(b"half a file, cut by a kill")
    generate.main([*model_options(trained_run), "--input", str(photos), "--zip", str(target)])
    assert f"removed 2 temporary file(s) left by a killed generate.py: {', '.join(map(str, stale))}" in caplog.text
    assert [path.exists() for path in stale + kept] == [False, False, True]
    assert zipfile.ZipFile(target).namelist() == ["img000.png", "img001.png"]
