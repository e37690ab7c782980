"""A run reads the data it was started on and writes only what it trained: paths stored absolute, a
moved dataset recognised or refused, nothing rewritten for steps already written, and everything that
can be refused (the same domain twice, a bad start file, a step too large for the memory) refused
before the run folder exists. In-process train.main calls on tiny networks; one real process for
`ulimit -v`."""
import errno
import json
import logging
import os
from pathlib import Path
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest

import checkpoints
import cli
import config
import cyclegan
import generate
import runs
import train
from config import Config

from conftest import TINY, make_dataset

REPO = Path(__file__).resolve().parent.parent


def cli_error(argv):
    """train.py's one line on bad input (run_cli's SystemExit)."""
    with pytest.raises(SystemExit) as ended:
        cli.run_cli(lambda: train.main(argv), "train.py")
    message = str(ended.value.code)
    assert message.startswith("train.py: error: ") and "\n" not in message, message
    return message


def snapshot(folder):
    """Every file under `folder` but the lock (its PID changes), with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != runs.LOCK_FILE}


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture
def two_folders(tmp_path, monkeypatch):
    """Two working directories, each with its own dataset called ds/ (other images, other names)."""
    first, second = tmp_path / "first", tmp_path / "second"
    make_dataset(first / "ds", counts=(3, 3, 2, 2), size=(36, 36))
    make_dataset(second / "ds", counts=(2, 2, 1, 1), size=(36, 36))
    for path in (second / "ds").rglob("*.png"):
        path.rename(path.with_name("other_" + path.name))
    monkeypatch.chdir(first)
    return first, second


def test_a_run_stores_its_paths_absolute_and_resumes_on_them_from_anywhere(two_folders, tmp_path, monkeypatch, caplog):
    first, second = two_folders
    train.main(["--dataroot", "ds", "--runs-root", "../runs", "--name", "run", *TINY, "--max-steps", "1"])
    run_dir = tmp_path / "runs" / "run"
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["dataroot"], saved["runs_root"]) == (str(first / "ds"), str(tmp_path / "runs"))
    recorded = json.loads((run_dir / "dataset.json").read_text())
    assert recorded == {"A": ["img000.png", "img001.png", "img002.png"], "B": ["img000.png", "img001.png", "img002.png"]}

    monkeypatch.chdir(second)  # which holds another ds/: the run still reads the first one
    caplog.set_level(logging.INFO, logger="cyclegan")
    train.main(["--runs-root", str(tmp_path / "runs"), "--name", "run", "--resume", "--max-steps", "2"])
    assert not warnings(caplog)
    assert json.loads((run_dir / "config.json").read_text())["dataroot"] == str(first / "ds")
    files = generate.run_files(str(run_dir))
    assert files["input"] == str(first / "ds" / "testA")


def test_a_moved_dataset_is_named_and_taken_at_its_new_place_only_with_the_same_images(two_folders, tmp_path):
    first, second = two_folders
    train.main(["--dataroot", str(first / "ds"), "--runs-root", str(tmp_path / "runs"), "--name", "run", *TINY,
                "--max-steps", "1"])
    run_dir = tmp_path / "runs" / "run"
    (first / "ds").rename(first / "moved")
    before = snapshot(run_dir)
    resume = ["--runs-root", str(tmp_path / "runs"), "--name", "run", "--resume", "--max-steps", "2"]

    assert cli_error(resume) == (
        f"train.py: error: {first / 'ds'}: the dataset folder of {run_dir} is gone (config.json's dataroot); if it "
        "moved, resume with --dataroot NEW_FOLDER (it must hold the images the run was trained on)")
    assert cli_error(resume + ["--dataroot", str(second / "ds")]) == (
        f"train.py: error: --dataroot {second / 'ds'}: domain A's training images differ from those the run was "
        "trained on (3 of its 3 missing, e.g. img000.png; 2 it never saw, e.g. other_img000.png); resume with "
        "the folder the run was trained on")
    assert snapshot(run_dir) == before

    train.main(resume + ["--dataroot", str(first / "moved")])
    assert json.loads((run_dir / "config.json").read_text())["dataroot"] == str(first / "moved")
    assert Path(checkpoints.checkpoint_paths(run_dir)[-1]).name == "step-000000002.npz"


def test_a_relative_dataset_path_in_config_json_is_never_looked_up_from_here(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.as_json(Config(dataroot="ds", ngf=4))))
    make_dataset(tmp_path / "ds", counts=(2, 2, 1, 1))
    monkeypatch.chdir(tmp_path)  # where a ds/ is: it must not be taken
    assert cli_error(["--runs-root", "runs", "--name", "run", "--resume"]) == (
        f"train.py: error: {run_dir / 'config.json'}: the key 'dataroot' holds the relative path 'ds', which names "
        "a different folder from each working directory; resume with --dataroot and the folder's full path")
    with pytest.raises(cli.UsageError, match="the key 'dataroot' holds the relative path 'ds'.*; give --input and --output"):
        generate.run_files(str(run_dir))


def test_a_resume_with_nothing_left_to_train_writes_nothing_and_steps_are_counted_per_process(dataset, tmp_path, capsys):
    runs = str(tmp_path / "runs")
    train.main(["--dataroot", dataset, "--runs-root", runs, "--name", "run", *TINY, "--max-steps", "2",
                "--sample-every", "1"])
    assert "trained 2 steps in" in capsys.readouterr().out
    run_dir = tmp_path / "runs" / "run"
    before = snapshot(run_dir)

    train.main(["--runs-root", runs, "--name", "run", "--resume", "--max-steps", "2"])
    out = capsys.readouterr().out
    assert f"nothing to train: {run_dir} is at step 2 of 2" in out and "trained" not in out
    assert snapshot(run_dir) == before  # no sample, event, checkpoint or generator written again

    train.main(["--runs-root", runs, "--name", "run", "--resume", "--max-steps", "3"])
    out = capsys.readouterr().out
    assert "trained 1 step in" in out and "(step 3)" in out
    samples = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert samples == [f"{d}_step000000{s}.png" for d in ("AtoB", "BtoA") for s in (1, 2, 3)]


@pytest.mark.parametrize("same", ["symlink", "options", "copy"])
def test_one_folder_as_both_domains_is_refused_and_a_copy_is_a_warning(tmp_path, same, caplog):
    make_dataset(tmp_path / "ds", counts=(2, 2, 1, 1), size=(36, 36))
    runs = tmp_path / "runs"
    if same == "symlink":
        shutil.rmtree(tmp_path / "ds" / "trainB")
        (tmp_path / "ds" / "trainB").symlink_to(tmp_path / "ds" / "trainA")
        argv = ["--dataroot", str(tmp_path / "ds")]
    elif same == "options":
        argv = ["--train-a", str(tmp_path / "ds" / "trainA"), "--train-b", f"{tmp_path}/ds/./trainA/"]
    else:
        shutil.copytree(tmp_path / "ds" / "trainA", tmp_path / "copy")
        argv = ["--train-a", str(tmp_path / "ds" / "trainA"), "--train-b", str(tmp_path / "copy")]
    argv += ["--runs-root", str(runs), "--name", "run", *TINY, "--max-steps", "1"]
    if same == "copy":
        train.main(argv)
        assert warnings(caplog) == [f"{tmp_path / 'ds' / 'trainA'} and {tmp_path / 'copy'} hold the same 2 files: a "
                                    "CycleGAN between them learns nothing but the identity"]
        return
    message = cli_error(argv)
    assert message.endswith(f"domains A and B are the same folder ({tmp_path / 'ds' / 'trainA'}); a CycleGAN "
                            "translates between two different sets of images")
    assert not runs.exists()


def test_without_test_folders_samples_and_evaluation_read_the_training_folders_said_once(tmp_path, caplog, monkeypatch):
    import metrics

    dataroot = make_dataset(tmp_path / "ds", counts=(2, 2, 0, 0), size=(36, 36))
    shutil.rmtree(tmp_path / "ds" / "testA")
    caplog.set_level(logging.INFO, logger="cyclegan")
    scored = []
    original = metrics.Evaluator.log_to_tensorboard
    monkeypatch.setattr(metrics.Evaluator, "log_to_tensorboard",
                        lambda self, *args: scored.append(args[-1]) or original(self, *args))
    train.main(["--dataroot", dataroot, "--runs-root", str(tmp_path / "runs"), "--name", "run", *TINY,
                "--epochs", "2", "--epochs-decay", "0", "--eval-every", "1"])
    infos = [r.getMessage() for r in caplog.records if r.getMessage().startswith("no test folder")]
    assert infos == [f"no test folder for domain {d}: sample grids and evaluation read the training folder "
                     f"{tmp_path / 'ds' / ('train' + d)}" for d in "AB"]
    assert scored == [2, 4]
    assert not [w for w in warnings(caplog) if "evaluation" in w]


def test_a_folder_of_other_files_is_not_offered_for_resume(dataset, tmp_path):
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "mine" / "notes.txt").write_text("the user's")
    assert cli_error(["--dataroot", dataset, "--runs-root", str(tmp_path / "runs"), "--name", "mine", *TINY]) == (
        f"train.py: error: {tmp_path / 'runs' / 'mine'} holds files that are not a run of train.py (notes.txt); "
        "give another --name or --runs-root, or move them away")
    assert sorted(os.listdir(tmp_path / "runs" / "mine")) == ["notes.txt"]


def test_a_refused_start_file_leaves_no_run_folder(dataset, tmp_path):
    import networks

    wider = tmp_path / "wider.keras"
    networks.build_generator(8, 1, "transpose", 0.02, name="generator_ab").save(wider)
    runs = tmp_path / "runs"
    argv = ["--dataroot", dataset, "--runs-root", str(runs), "--name", "run", *TINY, "--max-steps", "1"]
    assert "--start-ab" in cli_error(argv + ["--start-ab", str(wider)])
    assert not runs.exists()
    train.main(argv)  # the name is free
    assert checkpoints.checkpoint_paths(runs / "run")


def test_a_batch_larger_than_a_domain_is_a_warning(dataset, tmp_path, caplog):
    train.main(["--dataroot", dataset, "--runs-root", str(tmp_path / "runs"), "--name", "run", *TINY,
                "--max-steps", "1", "--batch-size", "8"])
    assert warnings(caplog) == ["--batch-size 8 is larger than the smaller domain (5 images): every batch repeats "
                                "images, and steps take longer for nothing"]


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_0(dataset, tmp_path, monkeypatch, caplog, capsys):
    """A second Ctrl-C (Python's KeyboardInterrupt) after the first step: config.json, no checkpoint."""
    steps = []
    original = cyclegan.CycleGAN.train_step

    def interrupted_at_the_second_step(self, *args):
        steps.append(1)
        if len(steps) == 2:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(cyclegan.CycleGAN, "train_step", interrupted_at_the_second_step)
    runs, run_dir = str(tmp_path / "runs"), tmp_path / "runs" / "run"
    argv = ["--dataroot", dataset, "--runs-root", runs, "--name", "run", *TINY, "--max-steps", "3"]
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)
    assert (run_dir / "config.json").exists() and not checkpoints.checkpoint_paths(run_dir)
    monkeypatch.setattr(cyclegan.CycleGAN, "train_step", original)

    message = cli_error(argv)
    assert f"{run_dir} already holds a run (config.json, dataset.json, events.out.tfevents." in message
    assert message.endswith("): continue it with --resume, or give another --name")
    caplog.set_level(logging.INFO, logger="cyclegan")
    train.main(["--runs-root", runs, "--name", "run", "--resume"])
    assert f"{run_dir} stopped before its first checkpoint: starting it again from step 0" in caplog.text
    assert "trained 3 steps" in capsys.readouterr().out
    assert Path(checkpoints.checkpoint_paths(run_dir)[-1]).name == "step-000000003.npz"


def test_a_full_disk_at_a_checkpoint_names_the_file_the_last_good_one_and_the_resume_command(dataset, tmp_path, monkeypatch):
    saves = []
    original = np.savez

    def disk_full_at_the_second_save(path, **arrays):
        saves.append(path)
        if len(saves) == 2:
            with open(path, "wb") as f:
                f.write(b"PK half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(path, **arrays)

    monkeypatch.setattr(checkpoints.np, "savez", disk_full_at_the_second_save)
    runs, run_dir = str(tmp_path / "runs"), tmp_path / "runs" / "run"
    message = cli_error(["--dataroot", dataset, "--runs-root", runs, "--name", "run", *TINY, "--epochs", "2",
                         "--epochs-decay", "0", "--save-every", "1"])
    first = run_dir / "checkpoints" / "step-000000006.npz"
    assert message == (f"train.py: error: {run_dir / 'checkpoints' / 'step-000000012.npz'}: could not write it at "
                       f"step 12 (No space left on device); last good checkpoint: {first}; make room, then continue "
                       f"with: python train.py --runs-root {runs} --name run --resume")
    assert [Path(p).name for p in checkpoints.checkpoint_paths(run_dir)] == [first.name]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [first.name]  # no half-written temporary


def test_the_activation_estimate_reads_the_networks_and_scales_with_the_step(tmp_path):
    """Four times the pixels, four times the activations; a batch of 2 twice; 16-bit half. BENCH["P"]
    keeps about 2.4 GB (its peak RSS is 2.7-2.9 GB, TensorFlow's own 0.6 GB included)."""
    import distribute

    tiny = Config(image_size=32, ngf=4, ndf=8, n_res_blocks=1)
    gan = cyclegan.build_gan(tiny, distribute.make_strategy("none"))
    at = lambda **change: cyclegan.step_activation_bytes(gan, tiny.replace(**change))  # noqa: E731
    assert at(image_size=64) == pytest.approx(4 * at(image_size=32), rel=0.02)
    assert at(batch_size=2) == 2 * at() and at(mixed_precision="bfloat16") == at() / 2
    # the generator's first layers alone, at 32 px: reflection pad (38x38x3), conv, norm, ReLU (32x32x4 each)
    assert cyclegan.activation_elements(gan.generator_ab, 32) > 38 * 38 * 3 + 3 * 32 * 32 * 4


def test_a_step_too_large_for_the_memory_is_one_line_before_anything_is_written(dataset, tmp_path):
    message = cli_error(["--dataroot", dataset, "--runs-root", str(tmp_path / "runs"), "--name", "run",
                         "--image-size", "4096", "--batch-size", "64", "--ngf", "4", "--n-res-blocks", "1"])
    assert message.startswith("train.py: error: --image-size 4096 --batch-size 64: a training step needs at least ")
    assert message.endswith("make --image-size, --batch-size, --ngf, --ndf or --n-res-blocks smaller")
    assert not (tmp_path / "runs").exists()


def test_under_ulimit_v_the_step_is_refused_in_one_line_not_by_a_signal(dataset, tmp_path):
    """The issue's case: --image-size 2048 under `ulimit -v` ended with std::bad_alloc (SIGABRT)."""
    limit = 6 * 2 ** 30

    def address_space_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    done = subprocess.run([sys.executable, "train.py", "--dataroot", dataset, "--runs-root", str(tmp_path / "runs"),
                           "--image-size", "2048", "--ngf", "4", "--n-res-blocks", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, preexec_fn=address_space_limit)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: --image-size 2048 --batch-size 1: a training step needs at least ")
    assert "`ulimit -v` leaves" in last and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()
