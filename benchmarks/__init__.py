"""Speed and memory figures of the project's own training code (`python -m benchmarks.run`)."""
