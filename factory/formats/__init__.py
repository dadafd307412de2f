"""Formats: reading files, normalising records, export in trainers' formats, the Mosaic-IT transform, sandboxed templates."""
