"""Networks, data, losses and training of the coarse-to-fine adversarial method (torch)."""
