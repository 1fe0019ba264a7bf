"""kubetune: fine-tune LLMs on Kubernetes with `kubectl apply`."""

__version__ = "0.1.0"
