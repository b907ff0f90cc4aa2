"""Data building: ingesting a city, the stage-1 grafts, labels and JSON, the stage-2 VQA, the gazetteer, the
retrieval data and hints, and a new city's recipes.
"""
