import json
import math
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np
import pytest

import bench
import cli
import config
import cyclegan
import networks
from benchmark import measure, steps

from conftest import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_STEP = os.path.join(REPO, "benchmark", "torch_step.py")
BENCH_TINY = [*TINY, "--steps", "2", "--warmup", "0", "--pipeline-images", "8", "--rounds", "2"]
TEXTS = ("config", "tensorflow", "onednn", "jit", "policy", "version", "warmup", "device", "threads", "backend",
         "backend_version", "keras", "cpu_kernels", "skipped")



def numbers(report, prefix=""):
    """Every leaf of the report that should be a measurement, as (name, value)."""
    for key, value in report.items():
        if key in TEXTS:
            continue
        if isinstance(value, dict):
            yield from numbers(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            yield from numbers(dict(enumerate(value)), f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def last_report(printed):
    last = printed.strip().splitlines()[-1]
    assert last.startswith("BENCH ")
    return json.loads(last[len("BENCH "):])


@pytest.mark.slow
def test_bench_reports_every_figure_as_a_positive_number(capsys, monkeypatch, tmp_path):
    """Under TensorFlow on a CPU: PyTorch (where this interpreter has torch), the loop with the CPU kernels
    and without, and without each kernel in turn (two kernels, so two ablated loops), op determinism and
    the fused step, in two rounds, and TensorFlow's other figures."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("CYCLEGAN_CPU_KERNELS", "winograd,fused_adam")
    bench.main([*BENCH_TINY, "--deterministic", "--ablate", "--torch", sys.executable])  # torch: requirements-test
    printed = capsys.readouterr().out
    assert printed.startswith("Keras ") and " on tensorflow" in printed.splitlines()[0]
    report = last_report(printed)
    assert (report["image_size"], report["ngf"], report["n_res_blocks"], report["steps"]) == (32, 4, 1, 2)
    assert report["policy"] == "float32" and report["backend"] == "tensorflow"
    assert report["cpu_kernels"] == ["winograd", "fused_adam"]
    assert sorted(report["ablation"]) == ["fused_adam", "winograd"]
    assert all(len(report["ablation"][name]) == 2 for name in report["ablation"])  # one ratio a round
    assert report["without_winograd"]["median_s"] > 0 and report["without_fused_adam"]["median_s"] > 0
    expected = {"loop.median_s", "loop.min_s", "loop.max_s", "loop.peak_rss_mb", "loop_plain.median_s",
                "fused.median_s", "loop_over_fused", "loop_plain_over_loop", "loop_deterministic.median_s",
                "deterministic_over_loop", "flops.iteration_gflop", "flops.matmul_gflops", "flops.conv3x3_gflops",
                "flops.loop_gflops", "flops.loop_plain_gflops", "inference.batch1_images_per_s",
                "inference.batch8_images_per_s", "pipeline.images_per_s",
                "pipeline.training_consumes_images_per_s", "peak_rss_mb"}
    ratios = ["loop_over_fused", "loop_plain_over_loop", "deterministic_over_loop"]
    lines = ["project loop (CycleGAN.train_step)", "plain loop (CPU kernels off)", "fused GradientTape step",
             "project loop, op determinism on", "deterministic / loop", "plain loop / loop", "CPU kernels: winograd",
             "without winograd", "without fused_adam"]
    expected |= {"torch.median_s", "torch.peak_rss_mb", "torch.params.generator", "loop_over_torch",
                 "loop_plain_over_torch", "torch.inference.batch1_images_per_s"}
    ratios += ["loop_over_torch", "loop_plain_over_torch"]
    lines += ["reference step", "loop / PyTorch", "plain loop / PyTorch"]
    values = dict(numbers(report))
    assert expected <= set(values)
    for name, value in values.items():
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (name, value)
    assert report["loop"]["min_s"] <= report["loop"]["median_s"] <= report["loop"]["max_s"]
    assert report["rounds"] == 2
    for ratio in ratios:
        assert len(report["round_ratios"][ratio]) == 2
        assert report[ratio] == pytest.approx(float(np.median(report["round_ratios"][ratio])))
    consumed = report["pipeline"]["training_consumes_images_per_s"]
    assert consumed == pytest.approx(2 / report["loop"]["median_s"])
    for line in lines:
        assert line in printed, line


@pytest.mark.slow
def test_bench_with_the_cpu_kernels_off_times_the_plain_loop_alone(capsys, monkeypatch):
    from benchmark import tensorflow_extras

    canned = {"peaks": {"matmul_gflops": 1.0, "conv3x3_gflops": 1.0},
              "inference": {"batch1_images_per_s": 1.0, "batch8_images_per_s": 1.0}}
    monkeypatch.setattr(tensorflow_extras, "generator_report_in_own_process", lambda argv: canned)  # checked above
    bench.main([*TINY, "--steps", "1", "--warmup", "0", "--pipeline-images", "2", "--cpu-kernels", "off"])
    printed = capsys.readouterr().out
    report = last_report(printed)
    assert report["cpu_kernels"] == [] and "loop_plain" not in report and "loop_plain_over_loop" not in report
    assert "CPU kernels: none" in printed and "plain loop" not in printed


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_bench_runs_under_another_backend_without_tensorflow(backend):
    script = ("import runpy, sys; sys.argv = ['bench.py'] + sys.argv[1:]; "
              "runpy.run_path('bench.py', run_name='__main__'); "
              "print('TENSORFLOW IMPORTED' if 'tensorflow' in sys.modules else 'NO TENSORFLOW')")
    env = dict(os.environ, KERAS_BACKEND=backend)
    if backend == "jax":  # XLA's CPU code unoptimised: compiles several times faster, the same maths
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()
    done = subprocess.run([sys.executable, "-c", script, *TINY, "--steps", "1", "--warmup", "1"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("Keras ") and f" on {backend}" in lines[0]
    assert lines[-1] == "NO TENSORFLOW"
    report = json.loads(lines[-2][len("BENCH "):])
    assert report["backend"] == backend and report["cpu_kernels"] == []
    assert report["loop"]["median_s"] > 0 and report["flops"]["loop_gflops"] > 0
    assert not {"fused", "inference", "pipeline"} & set(report)
    assert "TensorFlow's" in report["skipped"] and f"skipped: {steps.TENSORFLOW_ONLY}" in done.stdout


def keras_counts(name, norms):
    """The project's generator and discriminator parameters at config.BENCH[name]: all of them, or
    without the instance norms' scales and shifts (norms=False), which the reference's norm lacks."""
    c = config.BENCH[name]
    models = {"generator": cyclegan.build_generator(c, "g"),
              "discriminator": networks.build_discriminator(c.ndf, c.netd, c.sigmoid, c.init_gain, "d")}
    convolutions = (keras.layers.Conv2D, keras.layers.Conv2DTranspose)
    return {kind: model.count_params() if norms else
            sum(layer.count_params() for layer in model.layers if isinstance(layer, convolutions))
            for kind, model in models.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name, affine", [("S", False), ("P", True)])  # each config, each norm once
def test_the_torch_yardstick_has_the_projects_sizes_and_parameters(name, affine):
    """The reference's norm has no scale and shift: without --affine-norm the yardstick's networks have the
    project's convolutions' parameters, with it all of the project's."""
    done = subprocess.run([sys.executable, TORCH_STEP, "--config", name, "--count-params"]
                          + ["--affine-norm"] * affine, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1][len("PARAMS "):])
    sizes = counts.pop("sizes")
    assert sizes == {key: getattr(config.BENCH[name], key) for key in sizes}
    assert counts == keras_counts(name, norms=affine)
    assert counts != keras_counts(name, norms=not affine)  # the norms' parameters are what tells them apart


@pytest.mark.slow
def test_the_torch_yardstick_times_its_steps_and_reports_them():
    done = subprocess.run(["/bin/sh", "-c", '"$0" "$@"', sys.executable, TORCH_STEP, "--config", "S",
                           "--image-size", "32", "--ngf", "4", "--ndf", "8", "--n-res-blocks", "1",
                           "--steps", "2", "--warmup", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1][len("RESULT "):])
    assert len(result["times"]) == 2 and len(result["warmup_times"]) == 1
    assert min(result["times"]) == result["min"] <= result["median"] <= result["max"]
    assert result["peak_rss_MB"] > 0 and result["torch"] and result["device"] == "cpu"
    assert all(math.isfinite(loss) for loss in result["first_losses"] + result["last_losses"])


def test_conv_macs_counts_each_convolution_of_the_discriminator():
    discriminator = networks.build_discriminator(8, "book", False, 0.02)
    # 32 -> 16 -> 8 -> 4 -> 2 through the stride-2 4x4 convs, then a 4x4 valid conv on the padded 2x2.
    expected = (16 * 16 * 16 * 3 * 8 + 8 * 8 * 16 * 8 * 16 + 4 * 4 * 16 * 16 * 32
                + 2 * 2 * 16 * 32 * 64 + 1 * 1 * 16 * 64 * 1)
    assert measure.conv_macs(discriminator, 32, 32) == expected
    assert measure.conv_macs(discriminator, 32, 32, batch=3) == 3 * expected


def test_the_network_options_come_from_config_and_default_to_the_bench_configs():
    _, c = bench.parse_config(["--config", "P"])
    assert c == config.BENCH["P"]
    _, c = bench.parse_config(["--ngf", "8", "--cpu-kernels", "off", "--jit", "--mixed-precision"])
    assert c == config.BENCH["S"].replace(ngf=8, cpu_kernels="off", jit=True, mixed_precision="auto")


@pytest.mark.parametrize("argv, message", [
    (["--torch", "/nonexistent/python"], "--torch /nonexistent/python: no such interpreter"),
    (["--layers", "--jit"], "--layers times float32 layers alone: drop --jit"),
    (["--deterministic", "--jit"], "--jit with --deterministic: the op determinism --deterministic turns on keeps"),
    (["--cpu-kernels", "sometimes"], "--cpu-kernels: invalid choice: 'sometimes'"),
    (["--image-size", "30"], "--image-size: expected a multiple of 4"),
    (["--config", "M"], "--config: invalid choice: 'M'"),
])
def test_bad_options_are_refused_in_one_line(argv, message, capsys):
    """UsageError's one line (cli.run_cli prints it), or argparse's error line after its usage."""
    try:
        bench.parse_config(argv)
    except cli.UsageError as error:
        lines = str(error).splitlines()
    except SystemExit:
        lines = capsys.readouterr().err.strip().splitlines()[-1:]
    else:
        pytest.fail(f"{argv} was accepted")
    assert len(lines) == 1 and message in lines[0], lines


def test_tensorflow_only_figures_are_refused_under_another_backend(monkeypatch):
    monkeypatch.setattr(bench.quiet, "backend", lambda: "jax")
    for option in (["--layers"], ["--deterministic"], ["--dataroot", "data"]):
        with pytest.raises(cli.UsageError, match=f"{option[0]}: TensorFlow's figures"):
            bench.parse_config(option)


@pytest.mark.slow
def test_layers_mode_times_every_layer_kind_of_the_networks(capsys):
    bench.main(["--layers", *TINY, "--steps", "1", "--warmup", "0"])
    printed = capsys.readouterr().out
    report = json.loads(printed.strip().splitlines()[-1][len("BENCH "):])
    rows = report["rows"]
    kinds = {row["kind"] for row in rows}
    assert kinds == {"identity", "conv", "upconv", "norm", "resblock", "disc", "adam"}
    for row in rows:
        timings = row["tf"]
        assert timings["fwdbwd_ms"] > 0 and row["count"] > 0, row["name"]
        assert (timings["fwd_ms"] is None) == (row["kind"] == "adam"), row["name"]
        if timings["fwd_ms"] is not None:
            assert timings["fwd_ms"] > 0, row["name"]
        assert timings["per_iteration_ms"] == pytest.approx(row["count"] * timings["fwdbwd_ms"])
    by_name = {row["name"]: row for row in rows}
    # TINY: 32 px, ngf 4, 1 block, the book discriminator (4 stride-2 convs of ndf 8 .. 64, then the score).
    assert by_name["c7s1 conv 7x7 reflect"]["shape"] == [32, 32, 3]
    assert by_name["c7s1 conv 7x7 reflect"]["tf"]["out_shape"] == [32, 32, 4]
    assert by_name["up2 transposed conv 3x3 s2"]["tf"]["out_shape"] == [32, 32, 4]
    assert by_name["res conv 3x3 reflect"]["count"] == 2 * 6
    assert by_name["D score 4x4 s1"]["shape"] == [2, 2, 64]
    assert by_name["D score 4x4 s1"]["tf"]["out_shape"] == [1, 1, 1]
    assert not by_name["residual block (whole)"]["summed"]
    summed = sum(row["tf"]["per_iteration_ms"] for row in rows if row["summed"])
    assert report["total_ms"]["tf"] == pytest.approx(summed)
    calls = sum(row["count"] for row in rows if row["summed"])
    overhead = by_name["call overhead (identity)"]["tf"]["fwdbwd_ms"]
    assert report["net_total_ms"]["tf"] == pytest.approx(summed - calls * overhead)
    assert "torch" not in report and "total per iteration" in printed
