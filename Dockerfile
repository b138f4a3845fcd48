# The loan-recovery image: one image for every role in docker-compose.yml (topic init, trainer,
# scorer, producer); the command picks the role. Default command: the scorer.
#
# Python 3.11.7, the interpreter `make test` runs on in CI. The compiled kernels match the Python
# reference on 3.12 and 3.13 too (the segmenter follows the running interpreter's sum/sort).

# Build stage: the wheel with its compiled kernels (Cython + gcc stay out of the final image).
FROM python:3.11.7-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY schemas ./schemas
COPY models ./models
COPY producer ./producer
COPY consumer ./consumer
COPY loan_recovery ./loan_recovery
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# confluent-kafka, scikit-learn and river ship manylinux wheels; ours comes from the build
# stage with its kernels compiled.
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl \
    && rm -rf /wheels \
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
CMD ["serve", "--model", "/data/model", "--metrics-port", "9108", "--http-host", "0.0.0.0"]
