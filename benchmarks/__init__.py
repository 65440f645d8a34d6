"""distill-serve benchmarks: ``python -m benchmarks [--quick] [--full-model]``."""
