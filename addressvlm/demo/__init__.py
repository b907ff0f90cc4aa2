"""The embedded demo (``make demo``): a small real city built from OpenStreetMap (``city``, ``city_map``, ``osm``),
its rendered imagery (``render``), the run of the whole method on CPU (``pipeline``) and its report (``report``).

Nothing in the library imports this package.
"""
