"""The calgate service: config, scheduler, pipeline, outbox, sinks, status and CLI."""
