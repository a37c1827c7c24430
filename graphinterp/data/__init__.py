"""Datasets and tasks: digits, MNIST, Fashion-MNIST, CIFAR-10, modular addition, character LM."""
