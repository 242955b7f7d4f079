"""Presentation: the Typer commands, one module per command group, and the lazy command table (app).

May import: everything. The only place, with output.py, that prints; the only place that imports typer.
"""
