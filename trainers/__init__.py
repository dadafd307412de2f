"""Trainers: plugins that fine-tune and evaluate a model on one snapshot's export.

They register under the `factory.trainers` entry-point group.
"""
