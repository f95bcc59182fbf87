"""Training: DSM self-training (DeepLabV3+ head) and FOUND head training (optax, orbax)."""
