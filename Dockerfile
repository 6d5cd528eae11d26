# The web app, `sam3-studio` (docker-compose.yml, service `app`): CPU torch, Python 3.11.
# Training runs in the worker image (docker/worker.Dockerfile); proposals run here, on the
# CPU. For proposals on a GPU, build this service from docker/worker.Dockerfile instead.
#
#   docker build -t sam3-studio .
FROM python:3.11-slim

ARG TORCH_SPEC="torch>=2.4,<3"
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    HF_HOME=/cache/huggingface \
    HOST=0.0.0.0 \
    PORT=7860

# torch first, from the index that matches the hardware; the project's range accepts it.
RUN pip install --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"

WORKDIR /app
# The dependencies get a layer of their own (stub packages stand in for the source), so a
# change of the source does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir app worker sam3_lora \
 && touch app/__init__.py worker/__init__.py sam3_lora/__init__.py \
 && pip install ".[postgres]" \
 && pip uninstall -y sam3-lora-studio \
 && rm -rf app worker sam3_lora build ./*.egg-info
# Editable install: the studio finds migrations/ next to its source (app/store/migrate.py).
COPY . .
RUN pip install --no-deps -e . \
 && useradd --create-home --uid 1000 studio \
 && mkdir -p /data /cache/huggingface \
 && chown studio:studio /app /data /cache/huggingface

USER studio
EXPOSE 7860
# docker-compose.yml passes --no-worker (REDIS_URL set, workers are their own containers).
CMD ["sam3-studio", "--host", "0.0.0.0", "--port", "7860"]
