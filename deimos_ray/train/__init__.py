"""Ray Train loops (one ``train_loop_per_worker`` per algorithm) and their drivers."""
