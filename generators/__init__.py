"""Generators: each module adds rows to the warehouse (human import, teacher distillation, ...).

Each registers a `factory.plugins.Plugin` under the `factory.generators` entry-point group.
"""
