"""Using a trained generator: loading its file safely, padding images to the sizes it takes, and
translating images of any size in batches (generate.py, evaluate.py, the metrics and the demo)."""
import os
from collections import defaultdict

import numpy as np

from cli import UsageError
import networks  # noqa: F401  (registers the layers a saved generator names)
from quiet import keras
from keras import layers


def load_generator(path):
    """A generator saved by train.py, loaded in Keras' safe mode (no code from the file runs)."""
    if os.path.isdir(path):
        run = os.path.isfile(os.path.join(path, "config.json"))  # train.py's run folder, given for its generator
        raise UsageError(f"{path}: a folder, not a model file (expected a .keras file"
                         f"{'; in this run of train.py: generator_ab.keras or generator_ba.keras' * run})")
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such model file")
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file; all mean the same here
        raise UsageError(f"{path}: not a Keras model file ({brief(str(error)) or type(error).__name__})") \
            from None


def brief(text, limit=200):
    """A library's message (Keras' run to paragraphs) cut to the whole sentences of its first line that
    fit in `limit` characters, or to whole words: a one-line error never ends mid-word."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if len(line) <= limit:
        return line
    sentences = line[:limit + 1].split(". ")[:-1]
    if sentences:
        return ". ".join(sentences) + "."
    return line[:limit].rsplit(" ", 1)[0] + " ..."


def size_rule(generator):
    """(multiple, smallest): the image sides `generator` takes, read from the model. Each stride-2
    convolution halves them, so they are multiples of 2 ** (their number): 4 for the residual
    generator, 256 for the U-Net. The residual generator's reflection paddings also need 2 pixels at its
    bottleneck, so its smallest side is twice the multiple."""
    halvings = sum(isinstance(layer, layers.Conv2D) and layer.strides == (2, 2) for layer in generator.layers)
    multiple = 2 ** halvings
    reflects = any(getattr(layer, "reflect", False) for layer in generator.layers)
    return multiple, 2 * multiple if reflects else multiple


def pad_to_multiple(image, multiple=4, smallest=8):
    """Mirror-pads H and W up to a multiple and to at least `smallest` (size_rule; the defaults are the
    residual generator's). Images too small to mirror are edge-padded. Returns the padded image and the
    original (H, W)."""
    height, width = image.shape[:2]
    pad_h, pad_w = (max(smallest - size, -size % multiple) for size in (height, width))
    mode = "reflect" if pad_h < height and pad_w < width else "edge"
    return np.pad(image, [(0, pad_h), (0, pad_w), (0, 0)], mode=mode), (height, width)


TRANSLATE_BATCH = 8  # images a generator translates at once (generate.py, evaluate.py, the demo)


def translate_images(generator, images, batch_size=TRANSLATE_BATCH):
    """Translates a list of [-1, 1] images of any sizes, batching images of equal size together. Runs
    the generator in inference mode: the U-Net's dropout is off, so a translation is deterministic."""
    multiple, smallest = size_rule(generator)
    by_shape = defaultdict(list)
    for index, image in enumerate(images):
        by_shape[image.shape].append(index)
    results = [None] * len(images)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            padded = [pad_to_multiple(images[i], multiple, smallest) for i in chunk]
            batch = np.stack([p[0] for p in padded])
            translated = np.asarray(generator.predict_on_batch(batch))
            for i, output, (_, (height, width)) in zip(chunk, translated, padded):
                results[i] = output[:height, :width]
    return results
