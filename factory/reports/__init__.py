"""Reports: what a snapshot holds and how it was made, as a self-contained HTML page, JSON or a dataset card."""
