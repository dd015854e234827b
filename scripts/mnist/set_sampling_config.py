"""Change keys of the scheduler config kept in a converted `.safetensors` file; the weights stay as they are.

    python scripts/mnist/set_sampling_config.py tinyddim/bundled/mnist.safetensors timestep_spacing=trailing

A converted file (`tinyddim convert`) carries its scheduler config as JSON in its metadata. This rewrites
that JSON with each KEY=VALUE (VALUE read as JSON where it parses, else as a string), keeps every tensor
byte for byte (checked before the file is replaced), and renames the new file into place.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from safetensors.numpy import load_file, save_file  # noqa: E402

from tinyddim.config import write_atomic  # noqa: E402
from tinyddim.weights import read_metadata  # noqa: E402


def parse(assignment):
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise SystemExit(f"expected KEY=VALUE, got {assignment!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a converted .safetensors file")
    parser.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    args = parser.parse_args()
    metadata = read_metadata(args.path)
    if "scheduler_config" not in metadata:
        raise SystemExit(f"{args.path} has no scheduler_config in its metadata")
    config = json.loads(metadata["scheduler_config"])
    for key, value in map(parse, args.assignments):
        if key not in config:
            raise SystemExit(f"{key!r} is not a key of {args.path}'s scheduler config")
        print(f"{key}: {config[key]!r} -> {value!r}")
        config[key] = value
    tensors = load_file(args.path)

    def write(tmp):
        save_file(tensors, tmp, metadata={**metadata, "scheduler_config": json.dumps(config)})
        again = load_file(tmp)
        assert again.keys() == tensors.keys() and all((again[k] == tensors[k]).all() for k in tensors)

    write_atomic(args.path, write)


if __name__ == "__main__":
    main()
