"""What a protocol's tests use: the sender contract suite every sender must pass
(:mod:`protocols.testing.contract`) and an in-memory sender (:mod:`protocols.testing.memory`,
``protocol = "memory"``) for the gateway's own tests and the demo."""
