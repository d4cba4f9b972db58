"""Image sources (one schema for every format) and preprocessing on Ray Data."""
