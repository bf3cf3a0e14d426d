# cyseg as a Cytomine software (descriptor.json): `singularity run <image> cyseg job --cytomine_host ...`.
#
# The Cytomine software router pulls this image (docker://<container-image.image>:<version>) and runs
# "singularity run <image> <descriptor command-line>" with the placeholders replaced by
# "--<input id> <value>": the container is entered through ENTRYPOINT ["cyseg", "job"], and the leading
# words "cyseg job" of the command line arrive as positional words that `cyseg job` ignores (as it
# ignores the placeholders of optional inputs left empty).
#
# CPU build (default):   docker build -t cyseg/s_segment-dl-unet-cytology-pred:<version> .
# CUDA build: a base image with CUDA and Python 3.10-3.12 + pip (cytomine-python-client 4.x needs
# Python < 3.13), and CUDA wheels of torch:
#   docker build --build-arg BASE_IMAGE=<CUDA base with python3 and pip> \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t ... .
# TORCH_SPEC pins the torch version (pyproject.toml accepts 2.2 to 2.14.1).
# The model: the one shipped in the package (cyseg/models/default.pt) unless the job's model_path
# input or CYSEG_MODEL names another file (e.g. COPY my.pt /app/model.pt + ENV CYSEG_MODEL=/app/model.pt).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# every other dependency at the version the test suite ran with (tools/freeze_constraints.py)
COPY constraints.txt /app/constraints.txt

# torch first and from its own index (CPU wheels by default), so that `pip install .` finds the
# requirement satisfied and never pulls the much larger default (CUDA) wheels from PyPI
RUN python3 -m pip install --constraint /app/constraints.txt "${TORCH_SPEC}" --index-url "${TORCH_INDEX}"

COPY pyproject.toml README.md /app/src/
COPY cydata /app/src/cydata
COPY cyseg /app/src/cyseg
COPY segmenter /app/src/segmenter
COPY unet /app/src/unet
COPY transforms /app/src/transforms
COPY metrics /app/src/metrics
RUN python3 -m pip install --constraint /app/constraints.txt /app/src && rm -rf /app/src

COPY descriptor.json /app/descriptor.json

# never root; Singularity runs as the calling user anyway, with $HOME writable
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin cyseg
USER 1000:1000
ENV HOME=/home/cyseg
WORKDIR /home/cyseg

ENTRYPOINT ["cyseg", "job"]
