"""Recipes: the whole factory in one YAML file, run with `factory run` (spec, plan, runner)."""
