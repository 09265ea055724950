"""A flow's way through the gateway: intake, analysis, routing, delivery, filing, lots."""
