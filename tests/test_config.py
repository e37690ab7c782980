"""The run's configuration: one typed object, its command line, config.json checked on --resume."""
import dataclasses
import json
import os

import pytest

import cli
import config
from config import BENCH, DEMO, Config, as_json, from_command_line


def test_help_gives_every_config_field_with_its_help_and_default():
    text = " ".join(config.build_parser().format_help().split())  # unwrapped
    for name, spec in config.FIELDS.items():
        shown = "" if spec.default is None or spec.default is False else f" (default: {spec.default})"
        if "absent" in spec.metadata:
            shown = f" (default: {spec.metadata['absent']})"
        assert f"--{name.replace('_', '-')}" in text and spec.metadata["help"] + shown in text, name
    assert "--resume" in text


def test_help_says_what_a_run_does_without_the_options_that_default_to_nothing():
    text = " ".join(config.build_parser().format_help().split())
    for shown in ("quick runs) (default: none: every epoch)", "augmentation (default: none: other random numbers "
                  "each run)", "(.keras or .pth) (default: none: random initial weights)", "given alone: float16 on "
                  "a GPU, bfloat16 on a CPU (default: off: float32 throughout)"):
        assert shown in text


def test_only_the_options_given_override_and_nothing_else_is_filled_in():
    cfg, resume = from_command_line(["--dataroot", "d", "--lr", "0.001", "--sigmoid", "--mixed-precision"])
    assert not resume
    assert cfg == Config(dataroot=os.path.abspath("d"), lr=0.001, sigmoid=True, mixed_precision="auto",
                         runs_root=os.path.abspath("runs"))
    assert cfg.run_dir == os.path.abspath(os.path.join("runs", "cyclegan"))


def test_every_path_is_stored_absolute_with_the_home_folder_expanded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg, _ = from_command_line(["--train-a", "a", "--train-b", "~/b", "--test-a", "../t", "--start-ab", "./g.pth",
                                "--runs-root", "~/runs"])
    assert (cfg.train_a, cfg.train_b, cfg.test_a, cfg.start_ab, cfg.runs_root) == (
        str(tmp_path / "a"), str(tmp_path / "home" / "b"), str(tmp_path.parent / "t"), str(tmp_path / "g.pth"),
        str(tmp_path / "home" / "runs"))
    assert cfg.dataroot is None and cfg.test_b is None


def test_named_variants_change_only_what_they_name():
    def changed(variant):
        return {f: getattr(variant, f) for f in config.FIELDS if getattr(variant, f) != getattr(Config(), f)}

    assert changed(BENCH["S"]) == dict(image_size=128, ngf=32, n_res_blocks=6, netd="book")
    assert changed(BENCH["P"]) == {}  # the paper's network is the default
    assert set(changed(DEMO)) == {"image_size", "ngf", "ndf", "n_res_blocks", "upsample", "epochs",
                                  "epochs_decay", "sample_every", "seed"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEMO.ngf = 3


@pytest.mark.parametrize("argv, expected", [
    (["--image-size", "30"], "argument --image-size: expected a multiple of 4 that is at least 32, got 30"),
    (["--image-size", "28"], "argument --image-size: expected a multiple of 4 that is at least 32, got 28"),
    (["--batch-size", "0"], "argument --batch-size: expected a positive integer, got 0"),
    (["--epochs", "-1"], "argument --epochs: expected an integer >= 0, got -1"),
    (["--max-steps", "0"], "argument --max-steps: expected a positive integer, got 0"),
    (["--lr", "inf"], "argument --lr: expected a finite number >= 0, got inf"),
    (["--seed", "-1"], "argument --seed: expected an integer from 0 to 4294967295, got -1"),
    (["--seed", "4294967296"], "argument --seed: expected an integer from 0 to 4294967295, got 4294967296"),
    (["--beta1", "5"], "argument --beta1: expected a number from 0 up to (not including) 1, got 5"),
    (["--beta1", "1"], "argument --beta1: expected a number from 0 up to (not including) 1, got 1"),
    (["--name", ""], "argument --name: expected a plain folder name, got ''"),
    (["--name", "a/b"], "argument --name: expected a plain folder name, got 'a/b'"),
    (["--name", ".."], "argument --name: expected a plain folder name, got '..'"),
    # Text that is no number gets the same words (argparse alone would name the parsing function).
    (["--ngf", "4.5"], "argument --ngf: expected a positive integer, got 4.5"),
    (["--image-size", "1e9"], "argument --image-size: expected a multiple of 4 that is at least 32, got 1e9"),
    (["--seed", "1.5"], "argument --seed: expected an integer from 0 to 4294967295, got 1.5"),
    (["--beta1", "half"], "argument --beta1: expected a number from 0 up to (not including) 1, got half"),
    (["--lr", "fast"], "argument --lr: expected a finite number >= 0, got fast"),
    (["--epochs", "ten"], "argument --epochs: expected an integer >= 0, got ten"),
    # An empty path would mean the working directory: a run written into the folder one happens to be in.
    (["--runs-root", ""], "argument --runs-root: expected a path, got an empty one"),
    (["--test-a", ""], "argument --test-a: expected a path, got an empty one"),
    (["--start-ab", ""], "argument --start-ab: expected a path, got an empty one"),
    (["--tfrecord-key", ""], "argument --tfrecord-key: expected a feature name, got an empty one"),
])
def test_out_of_range_options_are_refused_in_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as ended:
        from_command_line(["--dataroot", "unused", *argv])
    assert ended.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f": error: {expected}")


def test_the_largest_seed_is_accepted():
    assert from_command_line(["--dataroot", "d", "--seed", "4294967295"])[0].seed == 2 ** 32 - 1


def saved_run(tmp_path, **changes):
    run_dir = tmp_path / "runs" / "run"
    run_dir.mkdir(parents=True)
    values = dict(as_json(Config(dataroot="/d", ngf=4, runs_root=str(tmp_path / "runs"), name="run")), **changes)
    (run_dir / "config.json").write_text(json.dumps(values))
    return run_dir / "config.json"


def test_resume_takes_the_saved_options_then_the_given_ones(tmp_path):
    saved_run(tmp_path, lr=0.01)
    cfg, resume = from_command_line(["--resume", "--runs-root", str(tmp_path / "runs"), "--name", "run",
                                     "--max-steps", "7"])
    assert resume and cfg.ngf == 4 and cfg.lr == 0.01 and cfg.max_steps == 7 and cfg.dataroot == "/d"


def test_options_added_after_a_run_was_made_take_their_defaults(tmp_path):
    path = saved_run(tmp_path, mixed_precision=True)
    values = json.loads(path.read_text())
    del values["print_every"]
    path.write_text(json.dumps(values))
    loaded = config.load(str(path))
    assert loaded.print_every == Config().print_every and loaded.mixed_precision is True


def test_runs_made_before_a_default_changed_resume_as_they_were_made(tmp_path):
    path = saved_run(tmp_path)
    values = json.loads(path.read_text())
    for name in ("netd", "init_gain", "netg", "gan_mode", "train_a", "start_ab", "tfrecord_key"):
        del values[name]
    path.write_text(json.dumps(values))
    loaded = config.load(str(path))
    assert (loaded.netd, loaded.init_gain, loaded.netg, loaded.gan_mode) == ("book", 0.0, "resnet", "lsgan")
    assert (loaded.train_a, loaded.start_ab, loaded.tfrecord_key) == (None, None, "image")
    assert (Config().netd, Config().init_gain) == ("patch70", 0.02)  # what new runs get


@pytest.mark.parametrize("change, expected", [
    (dict(ngf=None), "the key 'ngf': null"),
    (dict(ngf="many"), "the key 'ngf': 'many' is not a number"),
    (dict(ngf=0), "the key 'ngf': expected a positive integer, got 0"),
    (dict(ngf=4.5), "the key 'ngf': expected a positive integer, got 4.5"),
    (dict(runs_root=""), "the key 'runs_root': expected a path, got an empty one"),
    (dict(seed=-2), "the key 'seed': expected an integer from 0 to 4294967295, got -2"),
    (dict(lr=True), "the key 'lr': True is not a number"),
    (dict(upsample="bicubic"), "the key 'upsample': 'bicubic' is not one of transpose, resize"),
    (dict(sigmoid="yes"), "the key 'sigmoid': not true or false"),
    (dict(dataroot=3), "the key 'dataroot': 3 is not a string"),
    (dict(colour="blue"), "unknown key 'colour'"),
])
def test_a_hand_edited_config_json_is_one_line_naming_the_file_and_the_key(tmp_path, change, expected):
    path = saved_run(tmp_path, **change)
    with pytest.raises(cli.UsageError) as error:
        config.load(str(path))
    assert str(error.value) == f"{path}: {expected}"


def test_a_missing_key_or_a_config_that_is_not_an_object_is_named(tmp_path):
    path = saved_run(tmp_path)
    values = json.loads(path.read_text())
    del values["n_res_blocks"]
    path.write_text(json.dumps(values))
    with pytest.raises(cli.UsageError, match="the key 'n_res_blocks' is missing"):
        config.load(str(path))
    path.write_text("[1, 2]")
    with pytest.raises(cli.UsageError, match="expected a JSON object of options, found list"):
        config.load(str(path))


def test_train_resume_with_a_null_in_config_json_exits_with_one_line(tmp_path, capsys):
    """train.py's main as its process runs it (run_cli): the one line and nothing else; the same in a real
    process, stderr included: test_bad_input.py's test_real_processes_end_bad_input_without_a_traceback."""
    import train

    path = saved_run(tmp_path, n_res_blocks=None)
    argv = ["--resume", "--runs-root", str(tmp_path / "runs"), "--name", "run"]
    with pytest.raises(SystemExit) as ended:
        cli.run_cli(lambda: train.main(argv), "train.py")
    assert ended.value.code == f"train.py: error: {path}: the key 'n_res_blocks': null"
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("argv, expected", [
    (["--batch-size", "4"], "--batch-size 4 contradicts the run being resumed ({path} has 1)"),
    (["--start-ab", "/g.keras"], "--start-ab starts a fresh run's generators; --resume goes on from the run's own "
                                 "checkpoint: drop it, or start a new run under another --name"),
    (["--start-ba", "/g.keras"], "--start-ba starts a fresh run's generators; --resume goes on from the run's own "
                                 "checkpoint: drop it, or start a new run under another --name"),
])
def test_resume_refuses_a_new_batch_size_or_start_file(tmp_path, argv, expected):
    """A step counts batches of the run's size (another size would move its epochs and LR schedule), and
    a start file only starts a fresh run: never taken, nor recorded in config.json as if it had been."""
    path = saved_run(tmp_path)
    with pytest.raises(cli.UsageError) as error:
        from_command_line(["--resume", "--runs-root", str(tmp_path / "runs"), "--name", "run", *argv])
    assert str(error.value) == expected.format(path=path)
    assert from_command_line(["--resume", "--runs-root", str(tmp_path / "runs"), "--name", "run", "--batch-size",
                              "1"])[0].batch_size == 1


@pytest.mark.parametrize("name", ["start_ab", "start_ba"])
def test_a_relative_start_file_in_config_json_is_refused_on_resume(tmp_path, name):
    path = saved_run(tmp_path, **{name: "g.keras"})
    with pytest.raises(cli.UsageError) as error:
        from_command_line(["--resume", "--runs-root", str(tmp_path / "runs"), "--name", "run"])
    assert str(error.value) == (f"{path}: the key {name!r} holds the relative path 'g.keras', which names a different "
                                "file from each working directory; write the file's full path there")
