"""Evaluation: metrics of a model on a snapshot, verifiable-instruction checks, ROUGE, the judge."""
