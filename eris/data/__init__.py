"""Datasets: ShapeRef (procedural, offline) and the RefCOCO family (refer layout)."""
