"""The web console (``[web]``, docs/web.md): the journal's flows, rejected invoices,
connections and certificates in a browser, served by the daemon, and a retry action."""
