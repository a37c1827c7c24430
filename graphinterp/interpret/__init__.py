"""Interpretability evaluation: class-wise accuracy, cluster ablation, circuit extraction by iterative edge pruning and its ECS, on MLPs, CNNs and transformers."""
