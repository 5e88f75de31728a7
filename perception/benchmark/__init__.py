"""The speed harness behind ``perception bench`` (BENCHMARKS.md)."""

from perception.benchmark.report import format_report, write_doc_section, write_report
from perception.benchmark.run import run_bench

__all__ = ["format_report", "run_bench", "write_doc_section", "write_report"]
