"""Measure how well a trained run translates its dataset's test split.

    python evaluate.py --run-dir runs/h2z                    # both directions
    python evaluate.py --run-dir runs/h2z --direction AtoB --dataroot datasets/horse2zebra

Per direction it prints a small table and writes all scores to RUN_DIR/evaluation.json:
- FID and KID between the translated test images and the real test images of the target domain, in
  InceptionV3 pool features (ImageNet weights from keras.applications, images resized to 299 bilinear).
  Without the weights (no network, nothing in the Keras cache) they are skipped with one line.
- SSIM and PSNR against paired ground truth when the dataset has it (test<source>_gt/, as the offline
  demo's testA_gt/), next to the do-nothing baseline (the input itself against the truth).
- A domain score that needs no download: a small classifier trained here on the training folders,
  A vs B (cached beside the dataset, else in the run), gives the fraction of translations it assigns to
  the target domain, and the Fréchet distance of translated and real target images in its penultimate
  features. It is not FID: it is only comparable between runs scored by the same classifier file.
"""
import argparse
import logging
import os
import time

import checkpoints
import cli
import config
import cpu_kernels
import data
import inference
import metrics
from checkpoints import write_json
from metrics import DIRECTIONS

log = logging.getLogger("cyclegan")

ROWS = (("fid", "FID (InceptionV3)"), ("kid", "KID (InceptionV3)"),
        ("domain", "domain score (fraction judged target)"), ("domain_fd", "domain Fréchet distance"),
        ("ssim", "SSIM vs ground truth"), ("psnr", "PSNR vs ground truth (dB)"))


def format_table(direction, scores):
    _, source, target = DIRECTIONS[direction]
    lines = [f"{direction}: {scores['images']} test{source} images translated, "
             f"compared with {scores['target_images']} test{target} images"]
    for key, label in ROWS:
        if key not in scores:
            continue
        value = f"{scores[key]:.4f} ± {scores['kid_std']:.4f}" if key == "kid" else f"{scores[key]:.3f}"
        if f"{key}_baseline" in scores:
            value += f"   (do-nothing baseline {scores[key + '_baseline']:.3f})"
        lines.append(f"  {label:40s} {value}")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(
        description="Score a trained CycleGAN on its dataset's test split: FID/KID, ground truth, domain score.",
        formatter_class=cli.HelpFormatter)
    p.add_argument("--run-dir", required=True, help="a run made by train.py (holds config.json and the generators)")
    p.add_argument("--dataroot", help="dataset with trainA/ trainB/ and testA/ testB/; a domain without a test "
                                      "folder is scored on its training folder, as train.py does (default: the "
                                      "run's folders)")
    p.add_argument("--test-a", help="domain A's test folder: image files or TFRecord shards (default: the run's, "
                                    "or DATAROOT/testA/)")
    p.add_argument("--test-b", help="domain B's test folder (default: the run's, or DATAROOT/testB/)")
    p.add_argument("--direction", choices=("AtoB", "BtoA", "both"), default="both", help="directions to score")
    p.add_argument("--classifier", help=f"domain classifier .keras file, trained on the run's domains and cached "
                                        "there (with a .json of its facts) if missing; a file evaluate.py did not "
                                        f"write is never replaced (default: DATAROOT/{metrics.DOMAIN_FILE}, or beside "
                                        "the two training folders, named after them; RUN_DIR/ if that folder is "
                                        "read-only)")
    p.add_argument("--batch-size", type=int, default=inference.TRANSLATE_BATCH, help="images per generator batch")
    return p


def dataset_config(run_config, args):
    """The run's Config with the dataset to score on: --dataroot replaces the run's folders, --test-a
    and --test-b replace one test folder each."""
    if args.dataroot:
        run_config = run_config.replace(dataroot=args.dataroot, train_a=None, train_b=None, test_a=None, test_b=None)
    return run_config.replace(test_a=args.test_a or run_config.test_a,
                              test_b=args.test_b or run_config.test_b).with_resolved_paths()


def check_writable(folder):
    """One line, suggesting --classifier, when the domain classifier cannot be written into `folder`
    (train.py needs no such check: its default folder falls back to the run, which it writes)."""
    problem = checkpoints.unwritable(folder)
    if problem:
        raise cli.UsageError(f"{folder}: the domain classifier cannot be written there ({problem}); "
                             "give --classifier PATH in a folder you can write")


def remove_stale_temporaries(run_dir, classifier_path):
    """Removes the temporaries of evaluation.json and of the classifier's two files that a killed
    evaluate.py (or train.py --eval-every) left, in one INFO line; those of processes still running stay."""
    stale = checkpoints.stale_temporaries(run_dir, {"evaluation.json"})
    folder, name = os.path.split(os.path.splitext(classifier_path)[0])
    stale += checkpoints.stale_temporaries(folder, {f"{name}.keras", f"{name}.json"})
    checkpoints.remove_temporaries(sorted(set(stale)), "a killed evaluate.py")


def load_as_written(path):
    """The generator at `path` and when it was written, read before and after loading it: one that train.py
    replaced meanwhile is loaded again, so that the time is that of the file scored."""
    while True:
        before = os.stat(path)
        generator = inference.load_generator(path)
        after = os.stat(path)
        if (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns):
            return generator, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(before.st_mtime))


def evaluate(args, extract_features=None):
    """Scores the run; returns {direction: scores} and writes it to RUN_DIR/evaluation.json."""
    if not os.path.isdir(args.run_dir):
        raise cli.UsageError(f"--run-dir {args.run_dir}: no such folder (a run made by train.py)")
    if args.batch_size <= 0:
        raise cli.UsageError(f"--batch-size {args.batch_size}: expected a positive integer")
    run_config = config.load(os.path.join(args.run_dir, "config.json"))
    directions = ("AtoB", "BtoA") if args.direction == "both" else (args.direction,)
    generator_paths = {d: os.path.join(args.run_dir, f"{DIRECTIONS[d][0]}.keras") for d in directions}
    missing = [os.path.basename(p) for p in generator_paths.values() if not os.path.exists(p)]
    if missing:
        raise cli.UsageError(f"{args.run_dir}: the run has no generators yet ({', '.join(missing)}): train.py writes "
                             "them when it stops, at its end or on Ctrl-C; evaluate the run after that")
    folders = data.with_test_fallback(data.domain_folders(dataset_config(run_config, args)))  # as train.py reads
    classifier_path = os.path.abspath(args.classifier or metrics.default_classifier_path(folders, args.run_dir))
    remove_stale_temporaries(args.run_dir, classifier_path)
    if metrics.check_classifier(classifier_path, folders) is None:  # one line now, not after the test split is read
        check_writable(os.path.dirname(os.path.abspath(classifier_path)))
    loaded = {d: load_as_written(path) for d, path in generator_paths.items()}
    generators = {d: generator for d, (generator, _) in loaded.items()}
    evaluator = metrics.Evaluator(folders, run_config.image_size, directions, classifier_path, extract_features)
    results = evaluator.score(generators, args.batch_size)
    facts = evaluator.classifier_facts
    print(f"domain classifier {classifier_path}: held-out accuracy {facts['held_out_accuracy']:.1%} on the test "
          "folders")
    for direction, scores in results.items():
        print(format_table(direction, scores))
    report = dict(results, test_a=folders.test_a, test_b=folders.test_b, image_size=run_config.image_size,
                  fid_kid=evaluator.fid_skipped or "InceptionV3 ImageNet pool features",
                  classifier=dict(facts, path=classifier_path),
                  generators={generator_paths[d]: written for d, (_, written) in loaded.items()})  # what was scored
    report_path = os.path.join(args.run_dir, "evaluation.json")
    try:
        write_json(report_path, report)
        print(f"written to {report_path}")
    except OSError as error:  # a read-only run: the scores are above all the same
        log.warning("%s not written (%s); the scores are the ones printed above", report_path,
                    error.strerror or error)
    return results


def main(argv=None):
    args = build_parser().parse_args(argv)
    cpu_kernels.use(True)  # faster on a CPU with TensorFlow; CYCLEGAN_CPU_KERNELS=off keeps the plain path
    return evaluate(args)


if __name__ == "__main__":
    cli.run_cli(main, "evaluate.py")
