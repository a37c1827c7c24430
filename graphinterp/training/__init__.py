"""Training for modularity: cluster masks on parameters, the enmeshment loss, gradient similarity, the training loops and their configs and states."""
