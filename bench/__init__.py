"""dbkit's benchmarks: run by hand (``python -m bench``), never by the test suite."""
