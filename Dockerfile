# imgcls serving image: ONNX Runtime + BentoML and the imgcls wheel; no torch.
#
#   docker/wheelhouse.sh cpu          # wheels into .wheelhouse/cpu, imgcls's own into dist/
#   DOCKER_BUILDKIT=0 docker build -t imgcls:cpu .            # CPU (default)
#   docker/wheelhouse.sh gpu && DOCKER_BUILDKIT=0 docker build --build-arg VARIANT=gpu -t imgcls:gpu .
#   docker run --init -p 3000:3000 -v $PWD/bundles/NAME:/bundle:ro imgcls:cpu [--workers 2 ...]
#
# The bundle is mounted at /bundle (read-only is fine); to bake one in, derive an image:
#   printf 'FROM imgcls:cpu\nCOPY bundles/NAME/ /bundle/\n' | DOCKER_BUILDKIT=0 docker build -t my-model -f - .
# Extra arguments after the image
# name are `imgcls serve` flags; IMGCLS_* environment variables work too (service/host/config.py).
# BASE_IMAGE: any Debian-like image with python3.11 + venv (local/python:3.11-bookworm offline).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE} AS runtime
ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    BENTOML_HOME=/home/imgcls/bentoml BENTOML_DO_NOT_TRACK=True \
    IMGCLS_BUNDLE=/bundle
COPY docker/requirements-${VARIANT}.txt /tmp/requirements.txt
COPY .wheelhouse/${VARIANT}/ /tmp/wheels/
COPY dist/imgcls-*.whl /tmp/imgcls/
# The dependencies, then imgcls itself as the wheel built from this checkout (its console script
# `imgcls` lands in /opt/venv/bin). No torch: `imgcls train` and `imgcls export` say which extra they need.
RUN python3 -m venv /opt/venv \
 && pip install --no-index --find-links /tmp/wheels -r /tmp/requirements.txt \
 && pip install --no-index --no-deps /tmp/imgcls/imgcls-*.whl \
 && rm -rf /tmp/wheels /tmp/imgcls /tmp/requirements.txt \
 && ! python -c "import torch" 2>/dev/null \
 && python -c "import imgcls.service.host.service" \
 && useradd --create-home --uid 10001 --shell /usr/sbin/nologin imgcls
WORKDIR /home/imgcls
USER imgcls
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/readyz', timeout=2)"]
ENTRYPOINT ["imgcls", "serve", "--host", "0.0.0.0", "--port", "3000"]
CMD []

