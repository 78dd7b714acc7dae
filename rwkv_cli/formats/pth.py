"""Read PyTorch `.pth` checkpoints without torch.

Facts of the format that this relies on (torch's zip serialization, torch >= 1.6):

- the file is a zip archive whose members all sit in one folder `<name>/`;
- `<name>/data.pkl` is a pickle of the saved object (for RWKV checkpoints: a dict of tensors);
  each tensor is pickled as a call `torch._utils._rebuild_tensor_v2(storage, storage_offset,
  size, stride, requires_grad, backward_hooks[, metadata])` whose storage is a *persistent id*
  `("storage", torch.FloatStorage | HalfStorage | BFloat16Storage, key, location, numel)`;
- `<name>/data/<key>` holds that storage's raw elements, stored uncompressed (so they can be
  memory-mapped straight out of the zip);
- `<name>/byteorder` says `little` or `big` (absent in files older than torch 1.10: little).

The unpickler here resolves only the handful of globals needed to rebuild tensors and refuses
every other one before anything is called, so a malicious checkpoint (whose pickle names, say,
`os.system`) cannot run code. Tensors come back as lazy `StoredTensor` records; their data are
read one at a time through a short-lived memory map, so converting a checkpoint keeps only the
tensor at hand in memory.
"""

from __future__ import annotations

import io
import mmap
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import UserError

PathLike = Union[str, "os.PathLike[str]"]

# Element types we can read: name -> (numpy little-endian storage dtype, itemsize).
ELEMENT_TYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # the upper half of a float32: widened by a 16-bit shift
}


class ConversionError(UserError, ValueError):
    """A checkpoint that cannot be read or converted; the message names the file and the fault."""


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor's elements are, without reading them.

    `data_offset` is the absolute file offset of element [0, 0, ...]; `stride` is in elements,
    as in torch (a transposed view has a non-contiguous stride). `big_endian` files are rare but
    torch can write them. `file`: the file that holds the data, when it is not the one the
    reader is given (checkpoints sharded over several files).
    """

    key: str
    dtype: str  # "F32" | "F16" | "BF16"
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    data_offset: int
    big_endian: bool = False
    file: Path | None = None

    @property
    def n_values(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def span(self) -> tuple[int, int]:
        """First and one-past-last byte (absolute) that the view touches."""
        itemsize = ELEMENT_TYPES[self.dtype].itemsize
        if self.n_values == 0:
            return self.data_offset, self.data_offset
        last = sum((n - 1) * s for n, s in zip(self.shape, self.stride))
        return self.data_offset, self.data_offset + (last + 1) * itemsize


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: they are the high 16 bits of a float32."""
    widened = np.empty(bits.shape, dtype=np.uint32)
    np.left_shift(bits, 16, out=widened, dtype=np.uint32)  # one output array, no temporaries
    return widened.view(np.float32)


def to_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """A new contiguous float32 array from elements of type `dtype` (any byte order)."""
    if dtype == "BF16":
        return bf16_to_f32(values)
    return np.array(values, dtype=np.float32, order="C")


def rows_of(tensor: StoredTensor, start: int, stop: int) -> StoredTensor:
    """The rows [start, stop) of a tensor (along its first axis), still unread."""
    itemsize = ELEMENT_TYPES[tensor.dtype].itemsize
    return replace(
        tensor,
        shape=(stop - start,) + tensor.shape[1:],
        data_offset=tensor.data_offset + start * tensor.stride[0] * itemsize,
    )


def read_stored(path: PathLike, tensor: StoredTensor) -> np.ndarray:
    """Read one tensor as a new C-contiguous float32 array.

    Only the pages that hold the tensor are mapped, and the map is dropped before returning, so
    reading a checkpoint tensor after tensor never holds more than one of them.
    """
    if tensor.n_values == 0:
        return np.zeros(tensor.shape, dtype=np.float32)
    path = tensor.file or path
    start, end = tensor.span()
    if start < 0 or end > os.path.getsize(path):
        raise ConversionError(
            f"{path}: tensor {tensor.key!r} lies past the end of the file (truncated?)"
        )
    base = start - start % mmap.ALLOCATIONGRANULARITY
    element = ELEMENT_TYPES[tensor.dtype]
    if tensor.big_endian:
        element = element.newbyteorder(">")
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), end - base, offset=base, access=mmap.ACCESS_READ)
    try:
        flat = np.frombuffer(mapped, dtype=np.uint8, count=end - start, offset=start - base)
        itemsize = element.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat.view(element),
            shape=tensor.shape,
            strides=tuple(s * itemsize for s in tensor.stride),
            writeable=False,
        )
        result = to_float32(view, tensor.dtype)
        del view, flat
    finally:
        try:
            mapped.close()
        except BufferError:  # a view still alive: the map goes when it does
            pass
    return result


# ----------------------------------------------------------------------------------------------
# The restricted unpickler


@dataclass(frozen=True)
class _StorageType:
    dtype: str


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, int):  # torch.Size of a 1-element tuple is still a tuple; be lenient
        value = (value,)
    if not isinstance(value, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ConversionError(f"malformed tensor record: {what} {value!r} is not a tuple of ints")
    return tuple(value)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _StorageRef):
        raise ConversionError(f"malformed tensor record: storage is {type(storage).__name__}")
    if not isinstance(storage_offset, int) or storage_offset < 0:
        raise ConversionError(f"malformed tensor record: storage offset {storage_offset!r}")
    shape = _as_int_tuple(size, "size")
    strides = _as_int_tuple(stride, "stride")
    if len(shape) != len(strides) or any(n < 0 for n in shape) or any(s < 0 for s in strides):
        raise ConversionError(f"malformed tensor record: size {shape} with stride {strides}")
    return _TensorRef(storage, storage_offset, shape, strides)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
    if not isinstance(data, _TensorRef):
        raise ConversionError(f"malformed parameter record: data is {type(data).__name__}")
    return data


# Every global a tensor checkpoint needs; everything else is refused unresolved.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch", "FloatStorage"): _StorageType("F32"),
    ("torch", "HalfStorage"): _StorageType("F16"),
    ("torch", "BFloat16Storage"): _StorageType("BF16"),
}
_KNOWN_UNSUPPORTED_STORAGES = {
    "DoubleStorage", "LongStorage", "IntStorage", "ShortStorage", "CharStorage", "ByteStorage",
    "BoolStorage", "ComplexFloatStorage", "ComplexDoubleStorage", "UntypedStorage",
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: PathLike):
        super().__init__(file)
        self._path = path
        self._storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and name in _KNOWN_UNSUPPORTED_STORAGES:
            raise ConversionError(
                f"{self._path}: tensors of torch.{name} are not supported "
                "(only float32, float16 and bfloat16 weights)"
            )
        raise ConversionError(
            f"{self._path}: refusing to load: its pickle names the global {module}.{name}, "
            "which a tensor checkpoint does not need (a checkpoint that runs code is unsafe)"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        if (
            not isinstance(pid, tuple)
            or len(pid) != 5
            or pid[0] != "storage"
            or not isinstance(pid[1], _StorageType)
            or not isinstance(pid[2], str)
            or not isinstance(pid[4], int)
        ):
            raise ConversionError(f"{self._path}: unexpected persistent id {pid!r} in data.pkl")
        _, storage_type, key, _location, numel = pid
        known = self._storages.get(key)
        if known is None:
            known = self._storages[key] = _StorageRef(key, storage_type.dtype, numel)
        elif known.dtype != storage_type.dtype:
            raise ConversionError(f"{self._path}: storage {key} is used with two element types")
        return known


# ----------------------------------------------------------------------------------------------
# The zip container

_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
_LOCAL_MAGIC = b"PK\x03\x04"


def _member_data_offset(f, info: zipfile.ZipInfo, path: PathLike) -> int:
    """Absolute offset of a stored member's bytes (after its local header)."""
    f.seek(info.header_offset)
    raw = f.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size or raw[:4] != _LOCAL_MAGIC:
        raise ConversionError(f"{path}: zip member {info.filename} has a damaged local header")
    fields = _LOCAL_HEADER.unpack(raw)
    name_len, extra_len = fields[9], fields[10]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _read_member(archive: zipfile.ZipFile, name: str, path: PathLike) -> bytes:
    """A small member's bytes (data.pkl, byteorder); a damaged entry is a ConversionError."""
    try:
        return archive.read(name)
    except Exception as exc:
        # zipfile's exceptions on a damaged archive are many and undocumented (found by
        # tests/fuzz: BadZipFile, UnicodeDecodeError from a name, NotImplementedError from a
        # compression method, EOFError and zlib.error from a cut stream); each means the same
        raise ConversionError(f"{path}: cannot read {name} from the zip: {exc}") from exc


def is_torch_zip(path: PathLike) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == _LOCAL_MAGIC


def read_pth(path: PathLike) -> list[StoredTensor]:
    """The tensors of a torch zip checkpoint, in the pickle's order, without reading their data.

    Raises ConversionError for anything that is not a torch zip of float tensors, including a
    truncated file and a pickle that names any global besides the tensor-rebuilding ones.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # see _read_member: zipfile raises many kinds on a damaged archive
        with open(path, "rb") as f:
            head = f.read(4)
        if head == _LOCAL_MAGIC:
            raise ConversionError(
                f"{path}: the zip archive is damaged or truncated ({exc}); download it again"
            ) from exc
        if head[:2] == b"\x80\x02" or head[:1] == b"\x80":
            raise ConversionError(
                f"{path}: this is torch's legacy (pre-1.6, non-zip) format, which is not "
                "supported; re-save it with a recent torch"
            ) from exc
        raise ConversionError(f"{path}: not a PyTorch checkpoint (not a zip archive)") from exc
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        pickles = [name for name in members if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise ConversionError(
                f"{path}: expected one <name>/data.pkl in the zip, found {len(pickles)}"
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in members:
            byteorder = _read_member(archive, prefix + "byteorder", path)
            byteorder = byteorder.decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise ConversionError(f"{path}: unknown byteorder {byteorder!r}")
        pickled = _read_member(archive, pickles[0], path)

        unpickler = _RestrictedUnpickler(io.BytesIO(pickled), path)
        try:
            obj = unpickler.load()
        except ConversionError:
            raise
        except Exception as exc:  # any malformed pickle ends here, never half-loaded
            raise ConversionError(f"{path}: cannot unpickle data.pkl: {exc}") from exc
        if not isinstance(obj, dict):
            raise ConversionError(
                f"{path}: expected a dict of tensors, found a {type(obj).__name__}"
            )

        tensors: list[StoredTensor] = []
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            offsets: dict[str, int] = {}
            for key, ref in obj.items():
                if not isinstance(key, str) or not isinstance(ref, _TensorRef):
                    raise ConversionError(
                        f"{path}: entry {key!r} is a {type(ref).__name__}, not a tensor"
                    )
                storage = ref.storage
                member = members.get(f"{prefix}data/{storage.key}")
                if member is None:
                    raise ConversionError(
                        f"{path}: storage data/{storage.key} of tensor {key!r} is missing"
                    )
                if member.compress_type != zipfile.ZIP_STORED:
                    raise ConversionError(
                        f"{path}: storage data/{storage.key} is compressed; torch stores "
                        "tensors uncompressed (was the file re-zipped?)"
                    )
                itemsize = ELEMENT_TYPES[storage.dtype].itemsize
                if member.file_size < storage.numel * itemsize:
                    raise ConversionError(
                        f"{path}: storage data/{storage.key} holds {member.file_size} bytes, "
                        f"less than its {storage.numel} elements"
                    )
                if storage.key not in offsets:
                    offsets[storage.key] = _member_data_offset(f, member, path)
                base = offsets[storage.key]
                if base + member.file_size > file_size:
                    raise ConversionError(f"{path}: storage data/{storage.key} is truncated")
                tensor = StoredTensor(
                    key=key,
                    dtype=storage.dtype,
                    shape=ref.shape,
                    stride=ref.stride,
                    data_offset=base + ref.storage_offset * itemsize,
                    big_endian=byteorder == "big",
                )
                end = tensor.span()[1]
                if end > base + storage.numel * itemsize:
                    raise ConversionError(
                        f"{path}: tensor {key!r} (offset {ref.storage_offset}, size {ref.shape}, "
                        f"stride {ref.stride}) reaches past its storage of {storage.numel} elements"
                    )
                tensors.append(tensor)
    return tensors

