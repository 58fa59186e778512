"""drencoder: end-to-end differentially private federated LoRA fine-tuning with DR-Encoder."""

__version__ = "0.1.0.dev0"
