"""Training jobs: submission, state, progress, metric series, events and artifacts."""
