"""Losses of the deep clustering algorithms: ``dac`` (pair loss), ``dec`` (KL to the
target distribution); the SOM loss is part of :class:`deimos_ray.models.som.SOMLayer`."""
