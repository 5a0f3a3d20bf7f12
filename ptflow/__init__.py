"""ptflow: declarative, compiler-style pipelines that make PyTorch models fast for
inference and prove they did not get worse."""

__version__ = "0.1.0"
