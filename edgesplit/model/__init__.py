"""Models as flat lists of layer units, their partition into sides, and learned bottlenecks."""
