# kontrol Telegram bot, CPU only. Collection, index and model cache are volumes.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    KONTROL_IMAGES_DIR=/data/collection \
    KONTROL_INDEX_DIR=/data/index \
    KONTROL_MODELS_DIR=/data/models \
    KONTROL_BOT_STATE_DIR=/data/index/bot_state \
    TORCH_HOME=/data/models/torch

WORKDIR /app
# CPU-only torch wheels first (the default PyPI wheel carries CUDA and is several GB larger).
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY core ./core
COPY bot ./bot
# Only the command line of the kontrol package: the demo builder and evaluation are not served.
COPY kontrol/__init__.py kontrol/__main__.py kontrol/cli.py ./kontrol/
RUN pip install . && useradd --create-home --uid 10001 kontrol \
    && mkdir -p /data/collection /data/index /data/models && chown -R kontrol /data

USER kontrol
VOLUME ["/data/collection", "/data/index", "/data/models"]
# Index (incrementally) on start, then serve; a missing token stops with an explanation.
CMD ["sh", "-c", "kontrol index --quiet && exec kontrol bot"]
