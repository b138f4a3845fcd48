"""The streaming scorer service: Kafka loop, per-loan state + changelog, EOS, DLQ, metrics."""
