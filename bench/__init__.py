"""Performance benchmarks of the broker (issue 6): ``make bench`` / ``python -m bench``.

See docs/performance.md for what each benchmark measures and the figures.
"""
