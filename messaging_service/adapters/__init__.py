"""Adapters: the only modules that talk to Kafka, SMTP, Redis and HTTPS, translating their errors once."""
