"""Many edges, one cloud: U-shaped split learning across K clients (the `clients` config group)."""
