"""Cartography for stage-1 data: georeferenced rasters, street geometry, and labelled satellite crops."""
