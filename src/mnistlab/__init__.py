"""mnistlab: Hydra-configured PyTorch experiments for image classifiers, tracked in MLflow."""

__version__ = "0.1.0"
