"""Operators that use the execution handle themselves (DESIGN.md §6)."""
