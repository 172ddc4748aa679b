"""Throughput and latency benchmarks for the hifhir server (`make bench`, `python -m bench.run`)."""
