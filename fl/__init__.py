"""fl: federated fine-tuning of language models in plain PyTorch (FedAvg, FedLoRA)."""

__version__ = "0.1.0"
