"""Building the demo collection from Debian's gcompris-qt-data package (not needed to serve)."""
