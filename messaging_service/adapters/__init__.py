"""Adapters: the only modules that talk to Kafka, SMTP, Redis and HTTPS; errors translated once."""
