"""Return flows: fetched, received, stored, parsed and applied."""
