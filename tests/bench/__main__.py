"""`make bench`: run every benchmark and print its figures. Benchmarks never fail on a timing."""

from __future__ import annotations

from tests.bench import bench_proto


def main() -> None:
    bench_proto.main()


if __name__ == "__main__":
    main()
