"""Load a Paddle state-dict pickle (.pdparams) without running any code from it.

paddle.load is pickle.load: a crafted file names any global (os.system, builtins.eval) and calls it. Here
the unpickler resolves only the few globals that paddle.save writes for a state dict, and refuses every
other before anything of it is called (find_class runs when the name is read, before the call opcode):

- numpy arrays: numpy(._core|.core).multiarray._reconstruct, numpy.ndarray, numpy.dtype, and _codecs.encode
  (protocol 2 writes the array bytes as a latin-1 str); object dtypes are refused, so no array holds objects;
- builtins.tuple: Paddle >= 2.1 pickles a tensor as tuple((name, ndarray)) (paddle/framework/io.py
  reduce_varbase), used for nested dicts such as {'state_dict': {...}};
- collections.OrderedDict: a nested state dict kept as the OrderedDict that Layer.state_dict() returns.

The result is the unpickled object, post-processed as paddle.load(return_numpy=True) does for state dicts:
big arrays that protocol 2/3 split into '<key>@@.<i>' slices are joined back ('UnpackBigParamInfor@@') and
the name table 'StructuredToParameterName@@' is dropped.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import os
import pickle

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct  # numpy >= 2
except ImportError:
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # numpy < 2

UNPACK_INFO = "UnpackBigParamInfor@@"   # the spelling paddle.save writes  # typos: disable-line
NAME_TABLE = "StructuredToParameterName@@"


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (its `module.name` is the message)."""


def _reconstruct(subtype, shape, dtype):
    # numpy's _reconstruct builds an empty array of `subtype`; only plain ndarrays are tensors.
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"array of type {subtype!r}")
    return _np_reconstruct(np.ndarray, shape, dtype)


def _dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:               # an object array would be filled with arbitrary unpickled objects
        raise pickle.UnpicklingError(f"object dtype {dtype}")
    return dtype


def _encode(text, encoding="utf-8"):
    # Protocol 2 stores bytes as _codecs.encode(str, 'latin1'); other codecs have no business here.
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,   # numpy >= 2
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,    # numpy < 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("builtins", "tuple"): tuple,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        # Protocol 2 writes Python 2 names (__builtin__.tuple); map them as pickle itself does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not part of a Paddle state dict")


def _join_slices(obj: dict) -> dict:
    """Undo paddle's _unpack_saved_dict: big arrays stored as flat slices plus their original shape."""
    info = obj.pop(UNPACK_INFO, None)
    if info is None:
        return obj
    if not isinstance(info, dict):
        raise pickle.UnpicklingError(f"{UNPACK_INFO} is a {type(info).__name__}")
    for key, entry in info.items():
        parts = [obj.pop(part) for part in entry["slices"]]
        obj[key] = np.concatenate(parts).reshape(tuple(entry["OriginShape"]))
    return obj


def load_state_pickle(path: str | os.PathLike):
    """The object a Paddle state-dict file holds (ndarrays for tensors, as return_numpy=True gives).

    Raises ForbiddenGlobal naming the first global outside the allow-list, other pickle/ValueError/
    KeyError/TypeError for files that are not such pickles.
    """
    with open(path, "rb") as f:
        obj = _RestrictedUnpickler(f, encoding="latin1").load()
    if isinstance(obj, dict):
        obj = _join_slices(obj)
        obj.pop(NAME_TABLE, None)
    return obj
