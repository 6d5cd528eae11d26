# A training worker (docker-compose.yml, service `worker`): CUDA torch from the PyTorch
# wheel index (the wheels carry the CUDA runtime; the host needs the NVIDIA driver and
# the NVIDIA Container Toolkit), the project, and the GPU-pinning entry point.
#
#   docker build -f docker/worker.Dockerfile -t sam3-studio-worker .
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
FROM python:3.11-slim

ARG TORCH_SPEC="torch>=2.4,<3"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    HF_HOME=/cache/huggingface \
    GPU_LOCK_DIR=/locks

RUN pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"

WORKDIR /app
COPY pyproject.toml README.md ./
RUN mkdir app worker sam3_lora \
 && touch app/__init__.py worker/__init__.py sam3_lora/__init__.py \
 && pip install ".[postgres]" \
 && pip uninstall -y sam3-lora-studio \
 && rm -rf app worker sam3_lora build ./*.egg-info
COPY . .
RUN pip install --no-deps -e . \
 && chmod 755 docker/worker-entrypoint.sh \
 && useradd --create-home --uid 1000 studio \
 && mkdir -p /data /cache/huggingface /locks \
 && chown studio:studio /app /data /cache/huggingface /locks

USER studio
# The same worker as app/jobs/embedded_worker.py starts: solo pool, one task at a time, nothing
# prefetched, so a waiting job stays in the queue for the next free GPU.
ENTRYPOINT ["/app/docker/worker-entrypoint.sh"]
CMD ["celery", "-A", "worker.celery_app", "worker", "-Q", "train", "--pool=solo", "--concurrency=1", \
     "--prefetch-multiplier=1", "--without-gossip", "--without-mingle", "--loglevel=INFO", "-n", "train@%h"]
