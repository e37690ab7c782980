"""Generators from files: a run's .keras, or a PyTorch CycleGAN generator (.pth) read without torch.

The reference (junyanz/pytorch-CycleGAN-and-pix2pix) saves its ResnetGenerator's state_dict with
torch.save, either as a zip archive (torch >= 1.6: ARCHIVE/data.pkl and one ARCHIVE/data/KEY file per
storage) or as the legacy stream its pretrained models use (pickles of a magic number, a protocol
version, system info, the object, the storage keys; then each storage as an 8-byte little-endian
element count and its raw bytes). Either way the object is a pickle that names the functions that
rebuild its tensors. A pickle can name any function, so it is read by an unpickler that knows a few
names (TENSOR_GLOBALS, STORAGE_DTYPES) and refuses every other: nothing from the file runs.

The tensors are then matched to networks.build_generator's layers by the network's structure, in
order and by shape, not by name, since forks name their modules differently (DataParallel's
"module." prefix, affine instance norms, other module names). Instance-norm running statistics,
which old files carry and the reference drops when loading, are ignored; everything else must be
used exactly once.
"""
import collections
import os
import pickle
import re
import zipfile
from typing import NamedTuple

import numpy as np

from cli import UsageError

TORCH_SUFFIXES = (".pth", ".pt")
KERAS_SUFFIXES = (".keras", ".h5")  # what keras.saving.load_model takes
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked")  # ignored, as the reference does
STORAGE_DTYPES = {"FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "bf16",
                  "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
                  "ByteStorage": "u1", "BoolStorage": "?"}


# ---- reading torch.save files ------------------------------------------------------------------

class Storage:
    """One storage of the file: its element type and count, and (once read) its elements as a flat
    array; or a legacy view of elements [start, start + numel) of a `base` storage."""

    def __init__(self, dtype, numel, base=None, start=0):
        self.dtype, self.numel, self.base, self.start = dtype, numel, base, start
        self.elements = None

    @property
    def itemsize(self):
        return 2 if self.dtype == "bf16" else np.dtype(self.dtype).itemsize

    @property
    def array(self):
        if self.base is not None:
            return self.base.array[self.start:self.start + self.numel]
        return self.elements

    def fill(self, raw, byteorder="little"):
        order = "<" if byteorder == "little" else ">"
        if self.dtype == "bf16":  # numpy has no bfloat16: its bits are the top half of a float32's
            bits = np.frombuffer(raw, np.dtype("u2").newbyteorder(order))
            self.elements = (bits.astype(np.uint32) << 16).view(np.float32)
        else:
            self.elements = np.frombuffer(raw, np.dtype(self.dtype).newbyteorder(order))


class StorageType(NamedTuple):
    dtype: str


class TensorRef(NamedTuple):
    """A tensor as the pickle describes it; its storage's bytes may come only after the pickle."""
    storage: Storage
    offset: int
    size: tuple
    stride: tuple

    def array(self):
        """The elements as a new array, after checking they lie inside the storage (a hostile file could
        otherwise make numpy read memory outside it)."""
        source = self.storage.array
        if not isinstance(source, np.ndarray):
            raise ValueError("a tensor whose storage holds no data")
        if any(not isinstance(n, int) or n < 0 for n in (self.offset, *self.size, *self.stride)) \
                or len(self.size) != len(self.stride):
            raise ValueError(f"invalid tensor layout {self.size} / {self.stride}")
        if 0 in self.size:
            return np.zeros(self.size, source.dtype.newbyteorder("="))
        last = self.offset + sum((n - 1) * step for n, step in zip(self.size, self.stride))
        if last >= len(source):
            raise ValueError(f"a tensor reaches element {last} of a storage of {len(source)}")
        strides = [step * source.itemsize for step in self.stride]
        view = np.lib.stride_tricks.as_strided(source[self.offset:], self.size, strides, writeable=False)
        return view.astype(source.dtype.newbyteorder("="))


def rebuild_tensor(storage, offset, size, stride, *unused):
    """torch._utils._rebuild_tensor(_v2)'s arguments, checked; requires_grad, hooks and metadata unused."""
    if not isinstance(storage, Storage):
        raise ValueError("a tensor without a storage")
    return TensorRef(storage, offset, tuple(size), tuple(stride))


def rebuild_parameter(data, *unused):
    """An nn.Parameter (a state_dict saved with keep_vars=True) is its tensor."""
    return data


TENSOR_GLOBALS = {("collections", "OrderedDict"): collections.OrderedDict,
                  ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
                  ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
                  ("torch._utils", "_rebuild_parameter"): rebuild_parameter}


class TensorUnpickler(pickle.Unpickler):
    """Rebuilds tensors and ordered dicts, nothing else: any other global a pickle names (a class, a
    function such as os.system) is a UsageError before it is looked up, so no code from the file runs.
    Storages are the pickle's persistent ids ('storage', type, key, location, numel[, view])."""

    def __init__(self, file, path):
        super().__init__(file)
        self.path = path
        self.storages = {}  # key -> Storage
        self.views = {}  # view key -> Storage(base=...)

    def find_class(self, module, name):
        if (module, name) in TENSOR_GLOBALS:
            return TENSOR_GLOBALS[module, name]
        if module in ("torch", "torch.cuda") and name in STORAGE_DTYPES:  # files saved on a GPU say torch.cuda
            return StorageType(STORAGE_DTYPES[name])
        raise UsageError(f"{self.path}: refusing to load, its pickle asks for {module}.{name}, which is not "
                         "a tensor (no code from the file was run); expected a state_dict saved by torch.save")

    def persistent_load(self, saved_id):
        kind, storage_type, key, _location, numel, *view = saved_id
        if kind != "storage" or not isinstance(storage_type, StorageType) or not isinstance(numel, int):
            raise ValueError(f"unknown persistent id {kind!r}")
        storage = self.storages.setdefault(str(key), Storage(storage_type.dtype, numel))
        if view and view[0] is not None:  # a legacy view: elements [offset, offset + size) of the storage
            view_key, start, size = view[0]
            return self.views.setdefault(str(view_key), Storage(storage.dtype, size, storage, start))
        return storage


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", name)]
        if len(pickles) != 1:
            raise UsageError(f"{path}: a zip archive without a torch.save data.pkl (not a PyTorch .pth file)")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = (archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in archive.namelist()
                     else "little")
        with archive.open(pickles[0]) as f:
            unpickler = TensorUnpickler(f, path)
            result = unpickler.load()
        for key, storage in unpickler.storages.items():
            storage.fill(archive.read(f"{prefix}data/{key}"), byteorder)
    return result


def _load_legacy(path, f):
    try:
        magic = TensorUnpickler(f, path).load()
    except UsageError:
        raise
    except Exception:  # noqa: BLE001  (whatever the first bytes are, they are no torch.save header)
        magic = None
    if magic != LEGACY_MAGIC_NUMBER:
        raise UsageError(f"{path}: not a PyTorch .pth file (neither a torch.save zip archive nor its legacy format)")
    version = TensorUnpickler(f, path).load()
    if version != LEGACY_PROTOCOL_VERSION:
        raise UsageError(f"{path}: torch.save legacy protocol {version}, expected {LEGACY_PROTOCOL_VERSION}")
    TensorUnpickler(f, path).load()  # system info: the data is little-endian whatever it says
    unpickler = TensorUnpickler(f, path)
    result = unpickler.load()
    for key in TensorUnpickler(f, path).load():
        storage = unpickler.storages[str(key)]
        numel = int.from_bytes(f.read(8), "little")
        raw = f.read(numel * storage.itemsize)
        if len(raw) != numel * storage.itemsize or numel != storage.numel:
            raise EOFError(f"storage {key} ends early")
        storage.fill(raw)
    return result


def read_state_dict(path):
    """The tensors of a torch.save'd state_dict as {name: numpy array}, in the file's order."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file (expected a PyTorch .pth generator)")
    try:
        with open(path, "rb") as f:
            is_zip = f.read(4) == b"PK\x03\x04"
            if is_zip:
                result = _load_zip(path)
            else:
                f.seek(0)
                result = _load_legacy(path, f)
        if not isinstance(result, dict):
            raise UsageError(f"{path}: holds a {type(result).__name__}, expected a state_dict (names -> tensors)")
        tensors = collections.OrderedDict()
        for name, value in result.items():
            if not isinstance(value, TensorRef):
                raise UsageError(f"{path}: {name!r} is a {type(value).__name__}, expected a state_dict of tensors")
            tensors[str(name)] = value.array()
        return tensors
    except UsageError:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError) as error:
        kind = "zip archive" if is_zip else "file"
        raise UsageError(f"{path}: truncated or damaged PyTorch {kind} ({type(error).__name__}: "
                         f"{str(error)[:120]})") from None
    except Exception as error:  # noqa: BLE001  (a malformed pickle raises anything)
        raise UsageError(f"{path}: not a readable PyTorch .pth file ({type(error).__name__}: "
                         f"{str(error)[:120]})") from None


# ---- matching tensors to the generator's layers -------------------------------------------------

def shape_text(shape):
    return "(" + ", ".join(map(str, shape)) + ")"


class TensorQueue:
    """The state_dict's tensors, buffers left out, taken in order; the first that does not fit the
    expected shape is a UsageError naming it."""

    def __init__(self, path, state_dict):
        self.path = path
        self.items = [(name, array) for name, array in state_dict.items()
                      if name.rsplit(".", 1)[-1] not in BUFFER_NAMES]
        self.index = 0

    def peek_shape(self, ahead=0):
        index = self.index + ahead
        return self.items[index][1].shape if index < len(self.items) else None

    def take(self, shape, what):
        if self.index == len(self.items):
            last = f"after {self.items[-1][0]!r}" if self.items else "without a tensor"
            raise UsageError(f"{self.path}: not a whole CycleGAN ResnetGenerator, its tensors end {last}; "
                             f"expected {what} {shape_text(shape)} next")
        name, array = self.items[self.index]
        if array.shape != tuple(shape) or array.dtype.kind != "f":
            raise UsageError(f"{self.path}: tensor {name!r} {array.dtype.name} {shape_text(array.shape)} does not fit "
                             f"a CycleGAN ResnetGenerator: expected {what} {shape_text(shape)} there")
        self.index += 1
        return array.astype(np.float32)

    def check_all_used(self):
        if self.index < len(self.items):
            name, array = self.items[self.index]
            raise UsageError(f"{self.path}: tensor {name!r} {shape_text(array.shape)} is left over after the "
                             "generator's last convolution (not a CycleGAN ResnetGenerator)")


def generator_weights(path, state_dict):
    """Matches a ResnetGenerator's state_dict to networks.build_generator's layers.

    Returns (ngf, n_res_blocks, {Keras layer name: its weights}). Shapes decide everything: ngf from the
    first 7x7 convolution, affine norms from a vector of ngf after its bias, the residual blocks by
    counting the 3x3 convolutions of 4*ngf channels. PyTorch's conv weights (out, in, h, w) and
    ConvTranspose2d weights (in, out, h, w) both become Keras kernels by the same transpose, to
    (h, w, in, out) and Conv2DTranspose's (h, w, out, in); the transposed kernel is not flipped.
    """
    queue = TensorQueue(path, state_dict)
    first = queue.peek_shape()
    ngf = first[0] if first is not None and len(first) == 4 and first[1:] == (3, 7, 7) else None
    if ngf is None:
        queue.take(("ngf", 3, 7, 7), "the first 7x7 convolution's weight")
    affine = queue.peek_shape(2) == (ngf,)
    weights = {}

    def conv(name, channels_in, channels_out, size, transposed=False, norm=True):
        shape = (channels_in, channels_out, size, size) if transposed else (channels_out, channels_in, size, size)
        kernel = queue.take(shape, f"{name}'s {'transposed ' if transposed else ''}convolution weight")
        bias = queue.take((channels_out,), f"{name}'s convolution bias")
        weights[f"{name}_conv"] = [kernel.transpose(2, 3, 1, 0), bias]
        if norm and affine:
            weights[f"{name}_norm"] = [queue.take((channels_out,), f"{name}'s instance-norm {part}")
                                       for part in ("weight", "bias")]
        elif norm:
            weights[f"{name}_norm"] = [np.ones(channels_out, np.float32), np.zeros(channels_out, np.float32)]

    conv("c7s1", 3, ngf, 7)
    conv("down1", ngf, 2 * ngf, 3)
    conv("down2", 2 * ngf, 4 * ngf, 3)
    n_res_blocks = 0
    while queue.peek_shape() == (4 * ngf, 4 * ngf, 3, 3):
        n_res_blocks += 1
        conv(f"res{n_res_blocks}_a", 4 * ngf, 4 * ngf, 3)
        conv(f"res{n_res_blocks}_b", 4 * ngf, 4 * ngf, 3)
    conv("up1", 4 * ngf, 2 * ngf, 3, transposed=True)
    conv("up2", 2 * ngf, ngf, 3, transposed=True)
    conv("out", ngf, 3, 7, norm=False)
    queue.check_all_used()
    return ngf, n_res_blocks, weights


# ---- Keras models ------------------------------------------------------------------------------

def load_generator(path):
    """A Keras generator from a PyTorch .pth (or .pt) state_dict, or from a .keras file through
    inference.load_generator (in Keras' safe mode). A file of another kind (an image given by mistake)
    is refused by its name: Keras' own answer is a paragraph."""
    import inference  # here: download.py checks .pth files with this module without importing TensorFlow
    import networks

    if not path.lower().endswith(TORCH_SUFFIXES):
        if os.path.isfile(path) and not path.lower().endswith(KERAS_SUFFIXES):
            raise UsageError(f"{path}: not a generator file (expected a .keras model or a PyTorch .pth)")
        return inference.load_generator(path)
    ngf, n_res_blocks, weights = generator_weights(path, read_state_dict(path))
    generator = networks.build_generator(ngf, n_res_blocks, "transpose", 0.0)  # its weights are set below
    for layer_name, arrays in weights.items():
        generator.get_layer(layer_name).set_weights(arrays)
    return generator


def structure(generator):
    """What `generator` was built from, read from its layers, as run options: netg and ngf, and for the
    residual network (networks.build_generator) n_res_blocks and upsample; {} for a model that is
    neither of networks.py's generators."""
    import keras

    names = {layer.name for layer in generator.layers}
    if "c7s1_conv" in names:
        return {"netg": "resnet", "ngf": generator.get_layer("c7s1_conv").filters,
                "n_res_blocks": sum(bool(re.fullmatch(r"res\d+_add", name)) for name in names),
                "upsample": "transpose" if isinstance(generator.get_layer("up1_conv"), keras.layers.Conv2DTranspose)
                else "resize"}
    if "down1_conv" in names and "out_tanh" in names:
        return {"netg": "unet", "ngf": generator.get_layer("down1_conv").filters}
    return {}


def load_cyclegan_generator(path, named=None):
    """load_generator(path) and its structure; a model that is none of networks.py's generators (a
    discriminator, evaluate.py's domain classifier) is one UsageError naming `named` (default: the path),
    before it is run on anything."""
    generator = load_generator(path)
    found = structure(generator)
    if not found:
        raise UsageError(f"{named or path}: holds no CycleGAN generator (a model {generator.name!r} without the "
                         "layers of networks.py's generators)")
    return generator, found


def start_from(path, generator, option):
    """Sets `generator` (a run's, built from its options) to the weights of the generator file `path`;
    one UsageError naming the run option that does not match the file's network."""
    source, have = load_cyclegan_generator(path, f"{option} {path}")
    want = structure(generator)
    for key, value in want.items():
        if key in have and have[key] != value:
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{option} {path}: holds a generator with {key} {have[key]}, this run has {flag} "
                             f"{value} (give {flag} {have[key]} to start from it)")
    layers = [layer for layer in generator.layers if layer.weights]
    try:
        for layer in layers:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    except ValueError as error:
        raise UsageError(f"{option} {path}: its network does not match this run's "
                         f"({str(error).splitlines()[0][:160]})") from None
