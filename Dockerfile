# cyseg as a Cytomine software (descriptor.json): `singularity run <image> cyseg job --cytomine_host ...`.
#
# The Cytomine software router pulls this image (docker://<container-image.image>:<version>) and runs
# "singularity run <image> <descriptor command-line>" with the placeholders replaced by
# "--<input id> <value>": the container is entered through ENTRYPOINT ["cyseg", "job"], and the leading
# words "cyseg job" of the command line arrive as positional words that `cyseg job` ignores (as it
# ignores the placeholders of optional inputs left empty).
#
# CPU build (default):   docker build -t cyseg/s_segment-dl-unet-cytology-pred:<version> .
# CUDA build: torch's CUDA wheels (they bring the CUDA libraries; the host's NVIDIA driver does the
# rest) on NVIDIA's base image, which sets what the NVIDIA container runtime needs to expose the GPUs:
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t ... .
# The nvidia/cuda images have no Python: a base without python3 gets its distribution's python3
# (3.12 on Ubuntu 24.04) and venv; everything goes into the virtual environment /opt/venv on any
# base (Ubuntu's own Python refuses pip installs). Python 3.10-3.12 (cytomine-python-client 4.x
# needs < 3.13). Ubuntu 24.04 images give uid 1000 to a user "ubuntu": it makes way for ours.
# TORCH_SPEC pins the torch version (pyproject.toml accepts 2.2 to 2.14.1).
# The model: the one shipped in the package (cyseg/models/default.pt) unless the job's model_path
# input or CYSEG_MODEL names another file (e.g. COPY my.pt /app/model.pt + ENV CYSEG_MODEL=/app/model.pt).
#
# Size target: the CPU image stays under 2 GB. Derivation, from the installed sizes of the runtime
# packages (constraints.txt and torch) in the tested environment's .venv:
#   python:3.11-slim (rounded up)                                 0.15 GB
#   torch 2.13.0, CPU wheel                                       0.76 GB
#   the other runtime dependencies: opencv-python-headless 0.18,
#     scipy 0.14, rasterio 0.11, imagecodecs 0.08, sympy 0.08,
#     numpy 0.07, the 65 others 0.26                              0.92 GB
#   cyseg with its model, the venv's pip                          0.02 GB
#   total                                                         1.85 GB
# The CUDA image is larger by torch's CUDA wheels and NVIDIA libraries (several GB): no target.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Python for bases without it (nvidia/cuda), then the virtual environment everything goes into;
# the distribution's python3 is whatever version the base's release ships, hence no pin
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

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

# never root; Singularity runs as the calling user anyway, with $HOME writable. uid 1000, freed first
# where the base gives it to another user (Ubuntu 24.04: "ubuntu")
RUN if id -u 1000 >/dev/null 2>&1; then userdel --remove "$(id -nu 1000)"; fi \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin cyseg
USER 1000:1000
ENV HOME=/home/cyseg
WORKDIR /home/cyseg

ENTRYPOINT ["cyseg", "job"]
