# The loan-recovery image: one image for every role in docker-compose.yml (topic init, trainer,
# scorer, producer); the command picks the role. Default command: the scorer.
FROM python:3.12.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies first (their layer survives code edits), then the code. confluent-kafka,
# scikit-learn and river ship manylinux wheels, so no compiler is needed.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY models ./models
COPY producer ./producer
COPY consumer ./consumer
COPY loan_recovery ./loan_recovery
RUN pip install . \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin loanrec \
    && mkdir -p /data \
    && chown loanrec:loanrec /data

# Non-root. /data (a volume in compose) holds the synthetic book and the model bundle; it is
# created here owned by loanrec so that a fresh named volume inherits that ownership.
USER loanrec
VOLUME ["/data"]
EXPOSE 9108

# /healthz answers 200 while the scorer's loop runs; python is there, curl is not.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LOANREC_METRICS_PORT', '9108') + '/healthz', timeout=2)"]

ENTRYPOINT ["loan-recovery"]
CMD ["serve", "--model", "/data/model", "--metrics-port", "9108"]
