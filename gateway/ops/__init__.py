"""Running in production: metrics, certificates, systemd, alerts, the small HTTP server."""
