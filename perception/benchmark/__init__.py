"""The speed harness behind ``perception bench`` (BENCHMARKS.md)."""

from perception.benchmark.run import format_report, run_bench, write_report

__all__ = ["format_report", "run_bench", "write_report"]
