"""Plain PyTorch models and losses. Nothing in this package imports Ray."""
