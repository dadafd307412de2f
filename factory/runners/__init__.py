"""Runners: generation, filtering and training as recorded jobs that reach plugins through the registry only."""
