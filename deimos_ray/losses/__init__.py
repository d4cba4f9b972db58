"""Losses of the deep clustering algorithms: ``dac`` (pair loss), ``dec`` (KL to the
target distribution), ``som`` (DESOM's neighbourhood-weighted distances)."""
