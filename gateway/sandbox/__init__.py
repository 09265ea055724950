"""The demo and the partner simulators (stand-ins for Chorus Pro), with their
samples and the throw-away PKI they use."""
