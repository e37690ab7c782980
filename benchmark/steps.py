"""bench.py's whole-step report: the project loop (CycleGAN.train_step) timed in rounds beside the PyTorch
yardstick, under TensorFlow on a CPU with the CPU kernels on and off, and TensorFlow's own figures (the
fused step, the peaks, inference, the input pipeline) where Keras runs on TensorFlow.
"""
import json
import os
import tempfile

import numpy as np

import distribute
import quiet
from benchmark import measure
from benchmark.pytorch import run_torch_step
from quiet import keras

TENSORFLOW_ONLY = ("the fused GradientTape step, the matmul/conv peaks, tf.function inference and the tf.data "
                   "input pipeline")


def run(args, config, argv, threads):
    """The report of one bench.py run (a dict, as `BENCH {json}` prints it).

    Each round times, in turn, the PyTorch step, the loop, with --ablate the loop without each CPU kernel
    in turn, the plain loop (the CPU kernels off, where they were on), the loop under op determinism and
    the fused step; each ratio is the median of the
    rounds' ratios, so a slow spell of the machine hits both sides of a ratio alike. The kernels loop is
    built, warmed and timed first and its peak memory recorded before any other network is built; the
    plain loop is a CycleGAN of its own, traced with the kernels off (a traced step keeps its functions).
    """
    on_tensorflow = quiet.backend() == "tensorflow"
    if on_tensorflow:
        from benchmark import tensorflow_extras as extras
    rng = np.random.default_rng(0)
    size = config.image_size
    kernels = measure.use_cpu_kernels(config.cpu_kernels != "off")
    report = {"config": args.config, "image_size": size, "ngf": config.ngf, "ndf": config.ndf,
              "n_res_blocks": config.n_res_blocks, "batch_size": config.batch_size, "steps": args.steps,
              "warmup": args.warmup, "rounds": args.rounds, "jit": config.jit, "backend": quiet.backend(),
              "backend_version": measure.backend_version(), "keras": keras.__version__,
              "policy": distribute.precision_policy(config.mixed_precision), "cpu_count": os.cpu_count(),
              "device": measure.device_name(), "cpu_kernels": list(kernels),
              "threads": ("the backend's default" if threads is None
                          else f"{threads[0]} per op, {threads[1]} op(s) at a time")}
    if on_tensorflow:
        report.update(tensorflow=report["backend_version"], onednn=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"))
    torch_device = "cuda" if distribute.gpu_count() else "cpu"
    times = {"torch": [], "loop": [], "loop_plain": [], "fused": [], "loop_deterministic": []}
    on = bool(kernels)  # the loop's (and the fused step's) kernels; the plain loop has none
    timed = measure.timed_with_kernels
    gan, loop = measure.loop_iteration(config, rng)
    timed(on, loop, 0, args.warmup)
    ablated = {}  # --ablate: kernel -> (the kernels but that one, the loop traced with them)
    for round_ in range(args.rounds):
        if args.torch:
            torch = run_torch_step(args.torch, config, args.steps, args.warmup, torch_device)
            times["torch"].append(np.array(torch["times"]))
        times["loop"].append(timed(on, loop, args.steps))
        if round_ == 0:
            loop_peak_rss, loop_peak_gpu = measure.peak_rss_mb(), measure.peak_gpu_mb()
            for name in kernels if args.ablate else ():
                others = tuple(other for other in kernels if other != name)
                measure.use_cpu_kernels(others)
                ablated[name] = others, measure.loop_iteration(config, rng)[1]
                timed(others, ablated[name][1], 0, args.warmup)
                times[f"without_{name}"] = []
            if on:
                measure.use_cpu_kernels(False)
                _, plain_loop = measure.loop_iteration(config, rng)
                timed(False, plain_loop, 0, args.warmup)
            if on_tensorflow:
                measure.use_cpu_kernels(on)
                fused = extras.fused_iteration(config, rng)
                timed(on, fused, 0, args.warmup)
                if args.deterministic:
                    distribute.make_deterministic(0)  # as train.py --seed does: seeds, then op determinism
                    _, deterministic_loop = measure.loop_iteration(config, rng)
                    timed(on, deterministic_loop, 0, args.warmup)
                    extras.set_op_determinism(False)  # on for its own timings only
        for name, (others, ablated_loop) in ablated.items():
            times[f"without_{name}"].append(timed(others, ablated_loop, args.steps))
        if on:
            times["loop_plain"].append(timed(False, plain_loop, args.steps))
        if on_tensorflow:
            if args.deterministic:
                extras.set_op_determinism(True)
                times["loop_deterministic"].append(timed(on, deterministic_loop, args.steps))
                extras.set_op_determinism(False)
            times["fused"].append(timed(on, fused, args.steps))
    measure.use_cpu_kernels(on)
    for name, values in times.items():
        if values:
            report[name] = measure.summary(np.concatenate(values))
    add_ratios(report, times)
    if ablated:  # each kernel's share of the step: the loop without it over the loop with all
        report["ablation"] = {name: [float(np.median(a) / np.median(b)) for a, b in
                                     zip(times[f"without_{name}"], times["loop"])] for name in ablated}
    report["loop"]["peak_rss_mb"] = loop_peak_rss
    if loop_peak_gpu is not None:
        report["loop"]["peak_gpu_mb"] = loop_peak_gpu
    if args.torch:
        report["torch"].update({key: torch[key] for key in ("peak_rss_mb", "peak_gpu_mb", "version", "params")
                                if key in torch})
    flops = measure.iteration_flops(gan.generator_ab, gan.discriminator_a, size)
    report["flops"] = {"iteration_gflop": flops / 1e9}
    for name in ("loop", "loop_plain", "fused"):
        if name in report:
            report["flops"][f"{name}_gflops"] = flops / report[name]["median_s"] / 1e9
    if on_tensorflow:
        generator = extras.generator_report_in_own_process(argv)
        report["flops"].update(generator["peaks"])
        report["flops"]["loop_fraction_of_peak"] = report["flops"]["loop_gflops"] / max(
            report["flops"]["matmul_gflops"], report["flops"]["conv3x3_gflops"])
        report["inference"] = generator["inference"]
        if args.torch:
            report["torch"]["inference"] = extras.bench_torch_inference(args.torch, config)
        with tempfile.TemporaryDirectory() as scratch:
            dataroot = args.dataroot or extras.write_jpegs(scratch, min(args.pipeline_images, 64), 256, rng)
            pipeline = extras.bench_pipeline(dataroot, config, args.pipeline_images)
        consumed = 2 * config.batch_size / report["loop"]["median_s"]
        report["pipeline"] = {"images_per_s": pipeline, "training_consumes_images_per_s": consumed,
                              "headroom": pipeline / consumed}
    else:
        report["skipped"] = f"{TENSORFLOW_ONLY}: TensorFlow's, and Keras runs on {quiet.backend()}"
    report["peak_rss_mb"] = measure.peak_rss_mb()
    return report


RATIOS = {"loop_over_fused": ("loop", "fused"), "loop_over_torch": ("loop", "torch"),
          "loop_plain_over_torch": ("loop_plain", "torch"), "loop_plain_over_loop": ("loop_plain", "loop"),
          "fused_over_torch": ("fused", "torch"), "deterministic_over_loop": ("loop_deterministic", "loop")}


def add_ratios(report, times):
    """Each ratio of two timings that both ran: the median of the rounds' ratios of medians, and the
    rounds' ratios themselves (round_ratios)."""
    for name, (top, bottom) in RATIOS.items():
        if times[top] and times[bottom]:
            values = [float(np.median(a) / np.median(b)) for a, b in zip(times[top], times[bottom])]
            report[name] = float(np.median(values))
            report.setdefault("round_ratios", {})[name] = values


def ratio_label(name):
    return name.replace("loop_plain", "plain loop").replace("_over_", " / ").replace("torch", "PyTorch")


def print_report(report):
    def line(label, result):
        print(f"  {label:<34} {result['median_s']:8.3f} s/iter  (min {result['min_s']:.3f}, "
              f"max {result['max_s']:.3f})")

    print(f"config {report['config']}: {report['image_size']}x{report['image_size']}, ngf {report['ngf']}, "
          f"{report['n_res_blocks']} blocks, ndf {report['ndf']}, batch {report['batch_size']}, "
          f"jit {report['jit']}, {report['policy']}, {report['rounds']} x {report['steps']} steps after "
          f"{report['warmup']} warm-up, Keras {report['keras']} on {report['backend']} {report['backend_version']}, "
          f"on {report['device']}, threads: {report['threads']}")
    kernels = report["cpu_kernels"]
    print("  CPU kernels: " + (", ".join(kernels) + " (the plain loop: none)" if kernels
                               else "none (the networks' plain Keras path)"))
    if "skipped" in report:
        print(f"  skipped: {report['skipped']}")
    if "torch" in report:
        line(f"PyTorch {report['torch']['version']} reference step", report["torch"])
    line("project loop (CycleGAN.train_step)", report["loop"])
    if "loop_plain" in report:
        line("plain loop (CPU kernels off)", report["loop_plain"])
    if "loop_deterministic" in report:
        line("project loop, op determinism on", report["loop_deterministic"])
    if "fused" in report:
        line("fused GradientTape step", report["fused"])
    for name, values in report.get("ablation", {}).items():
        print(f"  without {name:<26} {float(np.median(values)):8.3f} x the loop  (rounds: "
              + " ".join(f"{value:.3f}" for value in values) + ")")
    ratios = [name for name in RATIOS if name in report]
    for index, name in enumerate(ratios):
        rounds = "" if report["rounds"] == 1 else " (rounds: " + " ".join(
            f"{value:.2f}" for value in report["round_ratios"][name]) + ")"
        print(("  " if index == 0 else ", ") + f"{ratio_label(name)} {report[name]:.2f}{rounds}", end="")
    if ratios:
        print()
    flops = report["flops"]
    speeds = ", ".join(f"{label} {flops[key]:.1f} GFLOP/s" for label, key in
                       (("loop", "loop_gflops"), ("plain loop", "loop_plain_gflops"), ("fused", "fused_gflops"))
                       if key in flops)
    text = f"  {flops['iteration_gflop']:.1f} GFLOP per iteration: {speeds}"
    if "matmul_gflops" in flops:
        text += (f"; measured peak matmul {flops['matmul_gflops']:.1f}, conv3x3 {flops['conv3x3_gflops']:.1f} "
                 f"GFLOP/s (loop at {100 * flops['loop_fraction_of_peak']:.0f}%)")
    print(text)
    if "inference" in report:
        inference = report["inference"]
        print(f"  generator inference: {inference['batch1_images_per_s']:.2f} images/s at batch 1, "
              f"{inference['batch8_images_per_s']:.2f} at batch 8", end="")
        if "torch" in report:
            theirs = report["torch"]["inference"]
            print(f"; PyTorch {theirs['batch1_images_per_s']:.2f} and {theirs['batch8_images_per_s']:.2f}", end="")
        print()
    if "pipeline" in report:
        pipeline = report["pipeline"]
        print(f"  input pipeline: {pipeline['images_per_s']:.0f} images/s; training consumes "
              f"{pipeline['training_consumes_images_per_s']:.2f} images/s ({pipeline['headroom']:.0f}x headroom)")
    rss = (f"  peak RSS: {report['loop']['peak_rss_mb']:.0f} MB after the loop, "
           f"{report['peak_rss_mb']:.0f} MB at the end")
    if "torch" in report:
        rss += f"; PyTorch {report['torch']['peak_rss_mb']:.0f} MB"
    print(rss)
    if "peak_gpu_mb" in report["loop"]:
        theirs = report.get("torch", {}).get("peak_gpu_mb")
        print(f"  peak GPU memory: {report['loop']['peak_gpu_mb']:.0f} MB after the loop"
              + (f"; PyTorch {theirs:.0f} MB" if theirs is not None else ""))
    print("BENCH " + json.dumps(report, sort_keys=True))
