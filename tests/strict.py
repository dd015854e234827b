"""A strict stand-in for CuPy, so CPU-only machines catch stray host conversions.

`StrictArray` wraps a NumPy array the way a cupy.ndarray wraps device memory: NumPy cannot see inside
it (`np.asarray(x)` raises), mixing it with a plain NumPy array raises, and calling a `numpy.*`
function on it raises. Code must go through `xp = get_array_module(x)`, which returns `strict`, a
module-like object whose functions unwrap, call NumPy and wrap again. `asarray` (host -> device) and
`asnumpy` (device -> host) are the only explicit crossings, as in CuPy.
"""

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin

from tinyddim.backend import register_device


class StrictArray(NDArrayOperatorsMixin):
    __array_priority__ = 1000

    def __init__(self, data):
        self._data = data

    def __array__(self, dtype=None, copy=None):
        raise TypeError("implicit conversion of a device array to NumPy (use xp.asnumpy / to_numpy)")

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__} called on a device array; use xp = get_array_module(x)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if "out" in kwargs:
            kwargs["out"] = tuple(_unwrap(x) for x in kwargs["out"])
        return _wrap(getattr(ufunc, method)(*(_unwrap(x) for x in inputs), **kwargs))

    def __getitem__(self, key):
        return _wrap(self._data[_unwrap(key)])

    def __setitem__(self, key, value):
        self._data[_unwrap(key)] = _unwrap(value)

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ & co: NumPy must not see the data
            raise AttributeError(name)
        attr = getattr(self._data, name)
        if not callable(attr):
            return _wrap(attr)
        return lambda *args, **kwargs: _wrap(attr(*(_unwrap(a) for a in args),
                                                  **{k: _unwrap(v) for k, v in kwargs.items()}))

    def __len__(self):
        return len(self._data)

    def __bool__(self):
        return bool(self._data)

    def __float__(self):
        return float(self._data)

    def __int__(self):
        return int(self._data)

    def __iter__(self):
        return (_wrap(row) for row in self._data)

    def __repr__(self):
        return f"StrictArray(shape={self._data.shape}, dtype={self._data.dtype})"


def _unwrap(x):
    if isinstance(x, StrictArray):
        return x._data
    if isinstance(x, np.ndarray) and x.ndim > 0:
        raise TypeError(f"a host NumPy array {x.shape} was mixed with a device array")
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return StrictArray(x)
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return x


class StrictModule:
    """The `xp` of StrictArray: NumPy's functions, with device arrays in and out."""

    ndarray = StrictArray

    def __getattr__(self, name):
        fn = getattr(np, name)
        if isinstance(fn, type) or not callable(fn):
            return fn
        return lambda *args, **kwargs: _wrap(fn(*(_unwrap(a) for a in args),
                                                **{k: _unwrap(v) for k, v in kwargs.items()}))

    def asarray(self, x, dtype=None):
        if isinstance(x, StrictArray):
            return x if dtype is None else x.astype(dtype)
        return StrictArray(np.array(x, dtype=dtype))

    def asnumpy(self, x):
        return np.array(x._data) if isinstance(x, StrictArray) else np.asarray(x)


strict = StrictModule()
register_device("strict", strict, StrictArray)
