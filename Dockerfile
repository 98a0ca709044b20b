# syntax=docker/dockerfile:1.7
# Two images from one file:
#   docker build --target api    -t mmkd-api .     # FastAPI service, no torch
#   docker build --target worker -t mmkd-worker .  # Celery worker with torch
# The worker installs torch==2.13.0 from PyTorch's CPU index by default. For NVIDIA GPUs build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# (CUDA wheels bundle the CUDA runtime; the host needs the NVIDIA driver and container toolkit,
# and docker-compose.yml reserves the GPU).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 mmkd
WORKDIR /app

# Build the mmkd wheel once (core, service, worker, cli, migrations, built-in datasets).
FROM base AS wheels
COPY pyproject.toml README.md ./
COPY core core
COPY service service
COPY worker worker
COPY cli cli
COPY migrations migrations
RUN pip wheel --no-deps --wheel-dir /wheels .

# The API: web stack and database drivers only. Nothing here pulls torch.
FROM base AS api
COPY --from=wheels /wheels /wheels
RUN pip install "$(ls /wheels/mmkd-*.whl)[service]" \
    && rm -rf /wheels \
    && ! python -c "import torch" 2>/dev/null
USER mmkd
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["mmkd", "serve", "--host", "0.0.0.0", "--port", "8000"]

# The worker: torch first (pinned, from the chosen index) so pip never swaps it, then mmkd.
FROM base AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0
COPY --from=wheels /wheels /wheels
RUN pip install "$(ls /wheels/mmkd-*.whl)[train,service,cluster]" && rm -rf /wheels
USER mmkd
ENV MMKD_HOME=/home/mmkd/.mmkd
CMD ["mmkd", "worker", "--queues", "gpu", "--concurrency", "1", "--beat"]
