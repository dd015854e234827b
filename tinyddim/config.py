"""Configs and files as diffusers writes them: `config.json` / `scheduler_config.json`, read into a `Config`.

A `Config` is a read-only dict whose keys are also attributes (`scheduler.config.num_train_timesteps`),
like diffusers' FrozenDict. `build_config` fills in defaults, drops diffusers' private keys
(`_class_name`, `_diffusers_version`, ...) and checks that every option is one we support.
"""

import json
import os
import tempfile


class Config(dict):
    """A read-only dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def _readonly(self, *args, **kwargs):
        raise TypeError("a Config is read-only; build a new one with from_config({**config, key: value})")

    __setitem__ = __delitem__ = __setattr__ = update = pop = clear = setdefault = _readonly

    def __reduce__(self):
        """Pickle as Config(items): the default way sets the items one by one, which a Config refuses."""
        return type(self), (dict(self),)


def build_config(defaults, given, choices=None, owner="config"):
    """`defaults` updated with the known keys of `given`; each key in `choices` must take a listed value.

    Unknown keys are ignored (as diffusers does: a DDPM config also configures a DDIMScheduler).
    """
    config = {key: given.get(key, value) for key, value in defaults.items()}
    for key, allowed in (choices or {}).items():
        if config[key] not in allowed:
            raise ValueError(f"{owner}: unsupported {key}={config[key]!r}; expected one of {list(allowed)}")
    return Config(config)


def read_json(path):
    """Load a JSON file, with errors that name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such config file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"invalid JSON in {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"invalid config in {path}: expected a JSON object, got {type(data).__name__}")
    return data


def find_file(path, names, subfolder=None, what="file"):
    """The first of `names` inside folder `path` (or `path/subfolder`); a clear error if there is none."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: {path}")
    folder = os.path.join(path, subfolder) if subfolder else path
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no folder {subfolder!r} in {path}")
    for name in names:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"no {what} in {folder}: expected one of {', '.join(names)}")


def write_atomic(path, write):
    """Call write(tmp) on a temporary file beside `path`, then rename it to `path`.

    A reader never sees a half-written file, and a failed write leaves nothing behind.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
