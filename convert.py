"""Save a PyTorch CycleGAN generator (.pth, e.g. from `python download.py --pretrained horse2zebra`) as a
.keras file, which generate.py, evaluate.py and train.py --start-ab then load like a run's generator.

    python convert.py pretrained/horse2zebra.pth horse2zebra.keras

The network (ngf, residual blocks) is read from the tensors' shapes; see pretrained.py.
"""
import argparse
import os

import cli
import pretrained
from checkpoints import write_atomically


def build_parser():
    p = argparse.ArgumentParser(description="Save a PyTorch CycleGAN generator (.pth state_dict of the "
                                            "reference's ResnetGenerator) as a Keras .keras model.",
                                formatter_class=cli.HelpFormatter)
    p.add_argument("source", help="the PyTorch generator (.pth)")
    p.add_argument("target", help="the Keras model to write (.keras)")
    p.add_argument("--overwrite", action="store_true", help="replace TARGET if it exists")
    return p


def convert(source, target, overwrite=False):
    """Writes the generator of `source` to `target` (whole or not at all); returns its structure."""
    if not source.lower().endswith(pretrained.TORCH_SUFFIXES):
        raise cli.UsageError(f"{source}: expected a PyTorch generator (.pth); a .keras file needs no converting")
    if not target.endswith(".keras"):
        raise cli.UsageError(f"{target}: expected a .keras file name for the Keras model")
    if os.path.lexists(target) and not overwrite:
        raise cli.UsageError(f"{target}: already exists; pass --overwrite to replace it")
    generator = pretrained.load_generator(source)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    write_atomically(target, generator.save)
    return pretrained.structure(generator)


def main(argv=None):
    args = build_parser().parse_args(argv)
    found = convert(args.source, args.target, args.overwrite)
    print(f"saved {args.target}: resnet generator, ngf {found['ngf']}, {found['n_res_blocks']} residual blocks")


if __name__ == "__main__":
    cli.run_cli(main, "convert.py")
