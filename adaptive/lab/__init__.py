"""A whole cluster on one machine: the launcher, the demos, the embedded broker, shaped links."""
