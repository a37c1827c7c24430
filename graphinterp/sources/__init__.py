"""Where models come from: architecture builders, the project's transformer, CIFAR ResNets, checkpoints and model files."""
