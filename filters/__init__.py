"""Filters: plugins that judge rows and write verdicts (keep or drop, with a reason).

They register under the `factory.filters` entry-point group and never delete a row;
`Warehouse.add_verdicts` is how a filter records its judgements.
"""
