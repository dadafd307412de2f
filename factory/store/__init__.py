"""The warehouse: the only code that speaks SQL (DuckDB and DuckLake)."""
