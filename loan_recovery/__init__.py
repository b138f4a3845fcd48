"""loan-recovery: streaming early-warning scorer and recovery-strategy engine over Kafka."""

__version__ = "0.1.0"
