"""``python -m benchmarks [NAME [OPTIONS]]``: list the benchmarks, or run one."""

from __future__ import annotations

import sys

from benchmarks import BENCHMARKS, load


def list_benchmarks() -> None:
    """Print every registered benchmark with its one-line summary."""
    print("usage: python -m benchmarks NAME [--help | OPTIONS]\n\nbenchmarks:")
    width = max(map(len, BENCHMARKS))
    for name in BENCHMARKS:
        print(f"  {name:<{width}}  {load(name).SUMMARY}")


def main(argv: list[str]) -> int:
    """Dispatch to the named benchmark's ``main``; list them when no name is given."""
    if not argv or argv[0] in ("-h", "--help", "list"):
        list_benchmarks()
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}\n", file=sys.stderr)
        list_benchmarks()
        return 2
    return load(name).main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
