"""A run reads the data it was started on and writes only what it trained: paths stored absolute, a
moved dataset recognised or refused, nothing rewritten for steps already written, and everything that
can be refused (the same domain twice, a bad start file, a step too large for the memory) refused
before the run folder exists. In-process train.main calls on tiny networks, and two real processes
running beside them: a run started from another working directory, and a step under `ulimit -v`."""
import errno
import json
import logging
import os
from pathlib import Path
import resource
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import imageio.v3 as iio
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import checkpoints
import cli
import config
import cyclegan
import generate
import runs
import train
from config import Config

from conftest import TINY, cli_error, make_dataset, runs_slow_tests

REPO = Path(__file__).resolve().parent.parent


def snapshot(folder):
    """Every file under `folder` but the lock (its PID changes), with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.name != runs.LOCK_FILE}


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture(scope="module", autouse=True)
def processes(request, dataset, tmp_path_factory):
    """This module's train.py processes, started with it so that they run beside the tests in this one:
    a run started with relative paths from the working directory first/, which the test of a run's
    paths resumes from second/ (each folder holds its own ds/: other images, other names); and a step
    at --image-size 2048 under `ulimit -v`, whose end the last test reads."""
    if not runs_slow_tests(request, __name__):  # the quick tier: no test here needs it
        yield None
        return
    root = tmp_path_factory.mktemp("processes")
    first, second = root / "first", root / "second"
    make_dataset(first / "ds", counts=(3, 3, 2, 2), size=(36, 36))
    make_dataset(second / "ds", counts=(2, 2, 1, 1), size=(36, 36))
    for path in (second / "ds").rglob("*.png"):
        path.rename(path.with_name("other_" + path.name))
    limit = 6 * 2 ** 30

    def address_space_limit():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with open(root / "stdout", "w") as stdout, open(root / "stderr", "w") as stderr:
        relative = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--dataroot", "ds", "--runs-root",
                                     "../runs", "--name", "run", *TINY, "--max-steps", "1", "--sample-every", "1"],
                                    cwd=first, stdout=stdout, stderr=stderr)
    with open(root / "ulimit_stderr", "w") as stderr:
        ulimit = subprocess.Popen([sys.executable, "train.py", "--dataroot", dataset, "--runs-root",
                                   str(root / "ulimit"), "--image-size", "2048", "--ngf", "4", "--n-res-blocks", "1"],
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=address_space_limit)
    yield SimpleNamespace(root=root, first=first, second=second, relative=relative, ulimit=ulimit)
    for process in (relative, ulimit):
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_relative_dataset_path_in_config_json_is_never_looked_up_from_here(tmp_path, monkeypatch):
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.as_json(Config(dataroot="ds", ngf=4))))
    make_dataset(tmp_path / "ds", counts=(2, 2, 1, 1))
    monkeypatch.chdir(tmp_path)  # where a ds/ is: it must not be taken
    assert cli_error(train.main, ["--runs-root", "runs", "--name", "run", "--resume"]) == (
        f"train.py: error: {run_dir / 'config.json'}: the key 'dataroot' holds the relative path 'ds', which names "
        "a different folder from each working directory; resume with --dataroot and the folder's full path")
    with pytest.raises(cli.UsageError, match="the key 'dataroot' holds the relative path 'ds'.*; give --input and --output"):
        generate.run_files(str(run_dir))


@pytest.mark.parametrize("same", ["symlink", "options"])
def test_one_folder_as_both_domains_is_refused(tmp_path, same):
    """A copy of a folder is only a warning: see the test of a run's early ends below, whose run has one."""
    make_dataset(tmp_path / "ds", counts=(2, 2, 1, 1), size=(36, 36))
    runs = tmp_path / "runs"
    if same == "symlink":
        shutil.rmtree(tmp_path / "ds" / "trainB")
        (tmp_path / "ds" / "trainB").symlink_to(tmp_path / "ds" / "trainA")
        argv = ["--dataroot", str(tmp_path / "ds")]
    else:
        argv = ["--train-a", str(tmp_path / "ds" / "trainA"), "--train-b", f"{tmp_path}/ds/./trainA/"]
    message = cli_error(train.main, argv + ["--runs-root", str(runs), "--name", "run", *TINY, "--max-steps", "1"])
    assert message.endswith(f"domains A and B are the same folder ({tmp_path / 'ds' / 'trainA'}); a CycleGAN "
                            "translates between two different sets of images")
    assert not runs.exists()


def test_a_runs_root_that_cannot_be_made_is_named_with_the_option(dataset, tmp_path):
    """A folder above the run that cannot hold it (a file, a read-only disk) is named with the option that
    places the run, before anything is written."""
    (tmp_path / "notes.txt").write_text("mine")
    runs = tmp_path / "notes.txt" / "runs"
    assert cli_error(train.main, ["--dataroot", dataset, "--runs-root", str(runs), "--name", "run", *TINY]) == (
        f"train.py: error: {runs / 'run'}: cannot write the run there ({tmp_path / 'notes.txt'} is a file); give "
        "a --runs-root this user can write")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_training_folder_that_is_a_file_is_the_one_line_said(dataset, tmp_path, caplog):
    """Checked before the test folders, whose INFO lines (samples from the training folder) would name
    the file as if it served."""
    image = os.path.join(dataset, "trainA", sorted(os.listdir(os.path.join(dataset, "trainA")))[0])
    caplog.set_level(logging.INFO, logger="cyclegan")
    message = cli_error(train.main, ["--train-a", image, "--train-b", os.path.join(dataset, "trainB"), "--runs-root",
                                     str(tmp_path / "runs"), *TINY])
    assert message.startswith(f"train.py: error: {image}: is a file, expected a folder of images (--train-a: ")
    assert not [r.getMessage() for r in caplog.records if image in r.getMessage()]
    assert not (tmp_path / "runs").exists()


def test_a_folder_of_other_files_is_not_offered_for_resume(dataset, tmp_path):
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    (tmp_path / "runs" / "mine" / "notes.txt").write_text("the user's")
    assert cli_error(train.main, ["--dataroot", dataset, "--runs-root", str(tmp_path / "runs"), "--name", "mine", *TINY]) == (
        f"train.py: error: {tmp_path / 'runs' / 'mine'} holds files that are not a run of train.py (notes.txt); "
        "give another --name or --runs-root, or move them away")
    assert sorted(os.listdir(tmp_path / "runs" / "mine")) == ["notes.txt"]


@pytest.mark.slow
def test_a_run_refused_warned_stopped_early_or_out_of_disk_leaves_what_it_can_go_on_from(
        tmp_path, monkeypatch, caplog):
    """One run, and everything that can end it before it has a checkpoint to show:

    - a --start-ab of another network size is refused before the run folder exists: the name stays free;
    - the same command without it starts, with one WARNING each for domain B being a copy of domain A and
      for a --batch-size larger than a domain (warnings only: the run goes on);
    - a second Ctrl-C (Python's KeyboardInterrupt) after its first step leaves config.json and no
      checkpoint: a fresh run of the name is refused, and --resume starts it again from step 0;
    - that resume finds the disk full at its second checkpoint: one line naming the file, the last good
      checkpoint and the command that continues; the last good checkpoint stays whole, no temporary is left.
    """
    import networks

    make_dataset(tmp_path / "ds", counts=(2, 2, 1, 1), size=(36, 36))
    shutil.copytree(tmp_path / "ds" / "trainA", tmp_path / "copy")
    wider = tmp_path / "wider.keras"
    networks.build_generator(8, 1, "transpose", 0.02, name="generator_ab").save(wider)
    runs, run_dir = str(tmp_path / "runs"), tmp_path / "runs" / "run"
    # one step an epoch (2 images, batch 4): a checkpoint every second epoch, so none after the first step
    argv = ["--train-a", str(tmp_path / "ds" / "trainA"), "--train-b", str(tmp_path / "copy"), "--runs-root", runs,
            "--name", "run", *TINY, "--batch-size", "4", "--epochs", "4", "--epochs-decay", "0", "--save-every", "2"]
    assert "--start-ab" in cli_error(train.main, argv + ["--start-ab", str(wider)])
    assert not Path(runs).exists()

    steps = []
    original = cyclegan.CycleGAN.train_step

    def interrupted_at_the_second_step(self, *args):
        steps.append(1)
        if len(steps) == 2:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(cyclegan.CycleGAN, "train_step", interrupted_at_the_second_step)
    caplog.clear()
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)  # the name is free
    assert warnings(caplog) == [
        f"{tmp_path / 'ds' / 'trainA'} and {tmp_path / 'copy'} hold the same 2 files: a CycleGAN between them "
        "learns nothing but the identity",
        "--batch-size 4 is larger than the smaller domain (2 images): every batch repeats images, and steps take "
        "longer for nothing"]
    assert (run_dir / "config.json").exists() and not checkpoints.checkpoint_paths(run_dir)
    monkeypatch.setattr(cyclegan.CycleGAN, "train_step", original)

    message = cli_error(train.main, argv)
    assert f"{run_dir} already holds a run (config.json, dataset.json, events.out.tfevents." in message
    assert message.endswith("): continue it with --resume, or give another --name")

    saves = []
    savez = np.savez

    def disk_full_at_the_second_save(path, **arrays):
        saves.append(path)
        if len(saves) == 2:
            with open(path, "wb") as f:
                f.write(b"PK half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return savez(path, **arrays)

    monkeypatch.setattr(checkpoints.np, "savez", disk_full_at_the_second_save)
    caplog.set_level(logging.INFO, logger="cyclegan")
    message = cli_error(train.main, ["--runs-root", runs, "--name", "run", "--resume"])
    assert f"{run_dir} stopped before its first checkpoint: starting it again from step 0" in caplog.text
    first = run_dir / "checkpoints" / "step-000000002.npz"
    assert message == (f"train.py: error: {run_dir / 'checkpoints' / 'step-000000004.npz'}: could not write it at "
                       f"step 4 (No space left on device); last good checkpoint: {first}; make room, then continue "
                       f"with: python train.py --runs-root {runs} --name run --resume")
    assert [Path(p).name for p in checkpoints.checkpoint_paths(run_dir)] == [first.name]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [first.name]  # no half-written temporary


@pytest.mark.slow
def test_a_stop_before_the_first_step_writes_nothing_and_the_same_command_starts_the_run(dataset, tmp_path,
                                                                                       monkeypatch, capsys):
    """SIGTERM while the networks are built: no untrained generators (a run with generators and no
    checkpoint would be refused as one whose checkpoints were lost), no --resume offered (there is no
    config.json to resume from), and the name stays free."""
    argv = ["--dataroot", dataset, "--runs-root", str(tmp_path / "runs"), "--name", "run", *TINY, "--max-steps", "1"]
    build_gan = cyclegan.build_gan

    def build_gan_as_sigterm_comes(*args):
        signal.raise_signal(signal.SIGTERM)  # to train.main's GracefulStop: stop at the next step's start
        return build_gan(*args)

    monkeypatch.setattr(cyclegan, "build_gan", build_gan_as_sigterm_comes)
    train.main(argv)
    assert capsys.readouterr().out.startswith(
        "\nstopped by SIGTERM before the first step; nothing written: run the same command again\n")
    assert os.listdir(tmp_path / "runs" / "run") == [runs.LOCK_FILE]
    monkeypatch.undo()
    train.main(argv)
    assert "trained 1 step in" in capsys.readouterr().out


@pytest.mark.slow
def test_a_run_resumes_anywhere_on_its_absolute_paths_or_a_moved_dataset_and_writes_only_what_it_trains(
        processes, monkeypatch, caplog, capsys):
    """One run, five processes of it: train.py started in first/ with relative paths, then train.main calls
    (two of them refused). It stores its paths absolute; from another working directory (which holds
    another ds/) it resumes on the first dataset, and with nothing left to train writes nothing and says
    so. Its dataset moved, it names the folder that is gone, refuses a folder of other images, and resumes
    at the new place on the same images. Each summary counts the steps its own process trained."""
    first, second, root = processes.first, processes.second, processes.root
    run_dir = root / "runs" / "run"
    assert processes.relative.wait(timeout=300) == 0, (root / "stderr").read_text()[-3000:]
    assert "trained 1 step in" in (root / "stdout").read_text()
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["dataroot"], saved["runs_root"]) == (str(first / "ds"), str(root / "runs"))
    recorded = json.loads((run_dir / "dataset.json").read_text())
    assert recorded == {d: [[f"img00{i}.png", (first / "ds" / f"train{d}" / f"img00{i}.png").stat().st_size]
                            for i in range(3)] for d in "AB"}

    monkeypatch.chdir(second)  # which holds another ds/: the run still reads the first one
    caplog.set_level(logging.INFO, logger="cyclegan")
    before = snapshot(run_dir)
    resume = ["--runs-root", str(root / "runs"), "--name", "run", "--resume"]
    train.main(resume + ["--max-steps", "1"])
    out = capsys.readouterr().out
    assert f"nothing to train: {run_dir} is at step 1 of 1" in out and "trained" not in out
    assert f"resumed {run_dir / 'checkpoints' / 'step-000000001.npz'} at step 1" in caplog.text
    assert not warnings(caplog) and "new place" not in caplog.text  # the first ds/, as recorded, not this one
    assert snapshot(run_dir) == before  # no sample, event, checkpoint or generator written again
    assert generate.run_files(str(run_dir))["input"] == str(first / "ds" / "testA")

    (first / "ds").rename(first / "moved")
    assert cli_error(train.main, resume + ["--max-steps", "3"]) == (
        f"train.py: error: {first / 'ds'}: the dataset folder of {run_dir} is gone (config.json's dataroot); if it "
        "moved, resume with --dataroot NEW_FOLDER (it must hold the images the run was trained on)")
    assert cli_error(train.main, resume + ["--max-steps", "3", "--dataroot", str(second / "ds")]) == (
        f"train.py: error: --dataroot {second / 'ds'}: domain A's training images differ from those the run was "
        "trained on (3 of its 3 missing or changed, e.g. img000.png; 2 it never saw, e.g. other_img000.png); "
        "resume with the folder the run was trained on")
    shutil.copytree(first / "moved", first / "redrawn")  # the same names, one image of another size
    iio.imwrite(first / "redrawn" / "trainB" / "img001.png", np.zeros((40, 40, 3), np.uint8))
    assert cli_error(train.main, resume + ["--max-steps", "3", "--dataroot", str(first / "redrawn")]) == (
        f"train.py: error: --dataroot {first / 'redrawn'}: domain B's training images differ from those the run was "
        "trained on (1 of its 3 missing or changed, e.g. img001.png; 1 it never saw, e.g. img001.png); resume "
        "with the folder the run was trained on")
    assert snapshot(run_dir) == before

    train.main(resume + ["--max-steps", "3", "--dataroot", str(first / "moved")])
    out = capsys.readouterr().out
    assert "trained 2 steps in" in out and "(steps 2-3)" in out
    assert f"resuming on the run's images in their new place: --dataroot {first / 'moved'}" in caplog.text
    saved = json.loads((run_dir / "config.json").read_text())  # written again by a process started in second/
    assert (saved["dataroot"], saved["runs_root"]) == (str(first / "moved"), str(root / "runs"))
    assert Path(checkpoints.checkpoint_paths(run_dir)[-1]).name == "step-000000003.npz"
    samples = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert samples == [f"{d}_step000000{s}.png" for d in ("AtoB", "BtoA") for s in (1, 2, 3)]
    events = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    events.Reload()
    assert [e.step for e in events.Tensors("loss/D_A")] == [1, 2, 3]  # each step once, across the processes


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
    # 1024 px, not more: train.py loads its sample images at --image-size before this check
    message = cli_error(train.main, ["--dataroot", dataset, "--runs-root", str(tmp_path / "runs"), "--name", "run",
                         "--image-size", "1024", "--batch-size", "4096", "--ngf", "4", "--n-res-blocks", "1"])
    assert message.startswith("train.py: error: --image-size 1024 --batch-size 4096: a training step needs at least ")
    assert message.endswith("make --image-size, --batch-size, --ngf, --ndf or --n-res-blocks smaller")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_under_ulimit_v_the_step_is_refused_in_one_line_not_by_a_signal(processes):
    """The issue's case: --image-size 2048 under `ulimit -v` ended with std::bad_alloc (SIGABRT)."""
    stderr_path = processes.root / "ulimit_stderr"
    assert processes.ulimit.wait(timeout=300) == 1, stderr_path.read_text()[-2000:]
    stderr = stderr_path.read_text()
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: error: --image-size 2048 --batch-size 1: a training step needs at least ")
    assert "`ulimit -v` leaves" in last and "Traceback" not in stderr
    assert not (processes.root / "ulimit").exists()


# ---- a finished run, copied and tampered with: --resume writes only over what it can stand behind ------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 4-step run (2 steps an epoch, a checkpoint each): step-2 and step-4 and its generators."""
    root = tmp_path_factory.mktemp("finished")
    dataroot = make_dataset(root / "ds", counts=(2, 2, 1, 1), size=(36, 36))
    train.main(["--dataroot", dataroot, "--runs-root", str(root / "runs"), "--name", "run", *TINY, "--epochs", "1",
                "--epochs-decay", "1", "--save-every", "1"])
    return root / "runs" / "run"


def copy_of(finished_run, tmp_path):
    shutil.copytree(finished_run, tmp_path / "runs" / "run")  # mtimes kept: the generators stay newer
    return tmp_path / "runs" / "run", ["--runs-root", str(tmp_path / "runs"), "--name", "run", "--resume"]


@pytest.mark.slow
@pytest.mark.parametrize("checkpoints_gone", ["emptied", "a file"])
def test_a_finished_run_without_its_checkpoints_is_refused_not_trained_again(finished_run, tmp_path,
                                                                            checkpoints_gone):
    run_dir, resume = copy_of(finished_run, tmp_path)
    shutil.rmtree(run_dir / "checkpoints")
    if checkpoints_gone == "a file":
        (run_dir / "checkpoints").write_text("not a folder")
        expected = (f"{run_dir / 'checkpoints'}: is a file, expected the run's folder of checkpoints; move the file "
                    "away, or put the run's checkpoints/ back")
    else:
        (run_dir / "checkpoints").mkdir()
        expected = (f"{run_dir}: has no checkpoint to resume from, yet holds its trained generator_ab.keras and "
                    "generator_ba.keras (resuming would train it again from step 0 over them); put its checkpoints/ "
                    "back, or fine-tune them in a new run: --start-ab and --start-ba with these files, under "
                    "another --name")
    before = snapshot(run_dir)
    assert cli_error(train.main, resume) == f"train.py: error: {expected}"
    assert snapshot(run_dir) == before


def dead_pid():
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


@pytest.mark.slow
def test_resume_removes_the_temporaries_a_killed_run_left_and_no_file_of_the_user(finished_run, tmp_path,
                                                                                 caplog):
    run_dir, resume = copy_of(finished_run, tmp_path)
    pid = dead_pid()
    left = [run_dir / f"config.tmp{pid}.json", run_dir / f"generator_ab.tmp{pid}.keras",
            run_dir / "checkpoints" / f"step-000000006.tmp{pid}.npz"]
    users = [run_dir / f"notes.tmp{pid}.txt", run_dir / "checkpoints" / f"keep.tmp{pid}.csv"]
    for path in left + users:
        path.write_text("x")
    caplog.set_level(logging.INFO, logger="cyclegan")
    train.main(resume)
    assert [path.exists() for path in left + users] == [False] * 3 + [True] * 2
    assert (f"removed 3 temporary file(s) left by a killed run: config.tmp{pid}.json, generator_ab.tmp{pid}.keras, "
            f"checkpoints/step-000000006.tmp{pid}.npz") in caplog.text


@pytest.mark.slow
def test_a_checkpoint_of_another_step_than_its_name_is_set_aside_not_resumed(finished_run, tmp_path, caplog):
    run_dir, resume = copy_of(finished_run, tmp_path)
    copied = run_dir / "checkpoints" / "step-000000005.npz"
    shutil.copy(run_dir / "checkpoints" / "step-000000002.npz", copied)  # as from another run
    caplog.set_level(logging.INFO, logger="cyclegan")
    train.main(resume)
    assert (f"{copied}: holds step 2, not the step 5 of its name: a checkpoint of another run; trying the "
            "previous checkpoint") in warnings(caplog)
    assert f"resumed {run_dir / 'checkpoints' / 'step-000000004.npz'} at step 4" in caplog.text
    assert not copied.exists() and Path(f"{copied}.corrupt").exists()


@pytest.mark.slow
def test_a_full_disk_at_the_end_names_the_generator_and_the_next_resume_writes_both_of_one_step(
        finished_run, tmp_path, capsys):
    """generator_ba's write fails (its temporary is /dev/full): generator_ab is of step 6, generator_ba still
    of step 4. The resume that has nothing to train writes both again from the checkpoint of step 6."""
    run_dir, resume = copy_of(finished_run, tmp_path)
    (run_dir / f"generator_ba.tmp{os.getpid()}.keras").symlink_to("/dev/full")
    assert cli_error(train.main, resume + ["--epochs", "2"]) == (
        f"train.py: error: {run_dir / 'generator_ba.keras'}: could not write it at step 6 (No space left on device); "
        f"last good checkpoint: {run_dir / 'checkpoints' / 'step-000000006.npz'}; make room, then continue with: "
        f"python train.py --runs-root {tmp_path / 'runs'} --name run --resume")
    assert not (run_dir / f"generator_ba.tmp{os.getpid()}.keras").exists()
    capsys.readouterr()
    train.main(resume + ["--epochs", "2"])
    out = capsys.readouterr().out
    assert "nothing to train" in out and f"generators:   {run_dir / 'generator_ab.keras'}, " in out
    import inference

    with np.load(run_dir / "checkpoints" / "step-000000006.npz") as saved:
        for name in ("generator_ab", "generator_ba"):
            written = inference.load_generator(str(run_dir / f"{name}.keras")).get_weights()
            assert all(np.array_equal(w, saved[f"weights/{name}/{i}"]) for i, w in enumerate(written)), name


@pytest.mark.slow
def test_a_full_disk_at_config_json_is_one_line_naming_it_and_the_way_on(finished_run, tmp_path):
    run_dir, resume = copy_of(finished_run, tmp_path)
    (run_dir / f"config.tmp{os.getpid()}.json").symlink_to("/dev/full")
    before = snapshot(run_dir)
    assert cli_error(train.main, resume + ["--epochs", "2"]) == (
        f"train.py: error: {run_dir / 'config.json'}: could not write it at step 5 (No space left on device); last "
        f"good checkpoint: {run_dir / 'checkpoints' / 'step-000000004.npz'}; make room, then continue with: python "
        f"train.py --runs-root {tmp_path / 'runs'} --name run --resume")
    assert snapshot(run_dir) == before  # the old config.json; no event file, checkpoint, sample or generator
