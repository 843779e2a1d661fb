# syntax=docker/dockerfile:1
# fastingress image: slim Python 3.11, multi-stage, non-root (uid 10001), `fastingress` as entrypoint.
#
#   config/deploy/build-image.sh [REGISTRY/PATH]   # = docker build -t fastingress:0.1.0 . (+ tag, push)
#   docker run --rm fastingress:0.1.0 --help
#
# The build stage installs the project into a virtual environment under /opt/fastingress; the
# final stage copies only that environment (no pip, no compilers, no sources).  Both stages use
# the same base image, so the venv's interpreter path (/usr/local/bin/python3.11) matches.
# The bytecode is compiled at build time: at run time the root filesystem is read-only and
# PYTHONDONTWRITEBYTECODE keeps Python from trying to write any.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# A C compiler for the compiled data path (setup.py: mypyc); it stays in this stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/fastingress
WORKDIR /src
COPY pyproject.toml README.md setup.py ./
COPY _build ./_build
COPY fastingress ./fastingress
COPY workers ./workers
# FASTINGRESS_MYPYC=1: compile the data path or fail the build (never a silently slower image);
# `fastingress --version` then says "(data path: compiled)".
RUN FASTINGRESS_MYPYC=1 /opt/fastingress/bin/pip install . \
    && /opt/fastingress/bin/python -m compileall -q /opt/fastingress/lib \
    && /opt/fastingress/bin/pip uninstall --yes pip setuptools \
    && /opt/fastingress/bin/fastingress --version | grep -F "(data path: compiled)"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="fastingress" \
      org.opencontainers.image.description="Kubernetes ingress controller and standalone reverse proxy that reads ingress-nginx manifests as they are" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/fastingress/bin:$PATH
RUN groupadd --system --gid 10001 fastingress \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin fastingress
COPY --from=build /opt/fastingress /opt/fastingress
USER 10001:10001
# Unprivileged ports as in config/deploy (the Service maps 80/443 to them); 10254: admin.
EXPOSE 8080 8443 10254
ENTRYPOINT ["fastingress"]
CMD ["controller"]
