"""What the cloud can learn: label and input leakage measured per run, and defenses (the `privacy` group)."""
