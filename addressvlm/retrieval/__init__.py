"""Cross-view retrieval (docs/retrieval.md): find the satellite tile of a street view or of a scene description.

The sibling task of address localization on the same city data: ``records`` holds the gallery and query files,
this package builds them, trains the two retrievers (an LVLM turned retriever, a CLIP dual encoder) and scores them.
"""
