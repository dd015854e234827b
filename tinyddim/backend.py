"""The array backend: the only module that imports CuPy.

Everything else follows the device of its data:

    xp = get_array_module(x)      # numpy for host arrays, cupy for GPU arrays

`device=` names ("cpu", "cuda") appear only at the edges (loading weights, pipelines, `sample`),
where `to_device` moves arrays. Noise is always drawn on the host from a `numpy.random.Generator`
(`randn`) and then moved, so one seed gives the same x_T on CPU and GPU.

A device is a name bound to an array module and the array type that module makes. "cpu" is NumPy;
"cuda" is CuPy, imported on first use. `register_device` adds others (the tests add a strict
stand-in that refuses implicit host conversion, as CuPy does).
"""

import numpy as np

_devices = {"cpu": (np, np.ndarray)}


def _cupy_device():
    try:
        import cupy
    except ImportError as err:
        raise RuntimeError(
            "device='cuda' needs CuPy: install it with `pip install tinyddim[gpu]` "
            "(or the cupy-cudaXXx wheel matching your CUDA)"
        ) from err
    return cupy, cupy.ndarray


def register_device(name, module, array_type):
    """Make `name` usable as `device=`; `module` must offer asarray/asnumpy and NumPy's functions."""
    _devices[name] = (module, array_type)


def _device(name):
    if name == "cuda" and "cuda" not in _devices:
        _devices["cuda"] = _cupy_device()
    if name not in _devices:
        raise ValueError(f"unknown device {name!r}; expected one of {sorted(set(_devices) | {'cuda'})}")
    return _devices[name]


def get_array_module(x):
    """The array module (numpy, cupy, ...) that owns `x`."""
    for module, array_type in _devices.values():
        if module is not np and isinstance(x, array_type):
            return module
    return np


def device_of(x):
    """The device name of array `x`."""
    for name, (module, array_type) in _devices.items():
        if module is not np and isinstance(x, array_type):
            return name
    return "cpu"


def to_device(x, device):
    """Move array `x` (host or device) to `device`; a no-op when it is already there."""
    module, _ = _device(device)
    if get_array_module(x) is module and not isinstance(x, (list, tuple)):
        return x
    return module.asarray(to_numpy(x))


def to_numpy(x):
    """A host (NumPy) copy of array `x`, explicit so that CuPy allows it."""
    xp = get_array_module(x)
    return np.asarray(x) if xp is np else xp.asnumpy(x)


def as_generator(generator):
    """None, an int seed or a numpy.random.Generator -> numpy.random.Generator.

    A list (or tuple) of Generators, one per image of a batch, stays a list: `randn` then draws image b's
    noise from generator b (diffusers' convention for a list of torch Generators).
    """
    if generator is None or isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(generator)
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, (list, tuple)):
        if not generator or not all(isinstance(g, np.random.Generator) for g in generator):
            raise TypeError("a generator list must hold one numpy.random.Generator per image, got "
                            f"[{', '.join(sorted({type(g).__name__ for g in generator}))}]")
        return list(generator)
    raise TypeError(
        "generator must be None, an int seed, a numpy.random.Generator or a list of them (one per image), "
        f"got {type(generator).__name__}"
    )


def randn(generator, shape, like=None):
    """Standard normal float32 noise drawn on the host from `generator`, then moved next to `like`.

    With a list of B Generators and shape (B, ...), image b's (...) slice is drawn from generator b, so
    an image's noise does not depend on the batch it is drawn in.
    """
    rng = as_generator(generator)
    if isinstance(rng, list):
        if not shape or len(rng) != shape[0]:
            raise ValueError(f"generator is a list of {len(rng)} Generators but the batch has "
                             f"{shape[0] if shape else 0} images; pass one per image")
        noise = np.stack([g.standard_normal(shape[1:], dtype=np.float32) for g in rng])  # (B, ...)
    else:
        noise = rng.standard_normal(shape, dtype=np.float32)
    return noise if like is None else get_array_module(like).asarray(noise)
