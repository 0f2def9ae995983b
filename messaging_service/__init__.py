"""messaging-service: Kafka email requests delivered over SMTP by a bounded asyncio worker pool."""

__version__ = "0.1.0"
