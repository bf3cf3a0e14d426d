# cyseg as a Cytomine App Engine task (descriptor.yml): the App Engine runs this image's entry point,
# `python3 -m cyseg.appengine`, with no arguments, no network and no credentials; it reads the slide
# and the parameters from /inputs and writes the cells to /outputs (see cyseg/appengine.py).
#
# Build, then bundle with the descriptor (the bundle script tags the image with the registry name
# the App Engine derives from the bundle, <namespace with '/' for '.'>:<version>, and saves it):
#   docker build -f appengine.Dockerfile -t cyseg-appengine .
#   .venv/bin/python tools/build_task_bundle.py --image cyseg-appengine
# CUDA build: the build args of Dockerfile (BASE_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04,
# TORCH_INDEX=https://download.pytorch.org/whl/cu126), and a bundle that asks for a GPU
# (build_task_bundle.py --gpus 1). The App Engine's uploader reads the image tar into one Java
# array, so an image over 2 GiB cannot be uploaded: the CUDA image cannot, as long as it does that.
# The model: the one shipped in the package (cyseg/models/default.pt), unless CYSEG_MODEL names
# another file (e.g. COPY my.pt /app/model.pt + ENV CYSEG_MODEL=/app/model.pt).
#
# Size target: the CPU image stays under 2 GB (and its saved tar under the uploader's 2 GiB). It
# holds what Dockerfile's image holds but descriptor.json; derivation, from the installed sizes of
# the runtime packages (constraints.txt and torch) in the tested environment's .venv:
#   python:3.11-slim (rounded up)                                 0.15 GB
#   torch 2.13.0, CPU wheel                                       0.76 GB
#   the other runtime dependencies: opencv-python-headless 0.18,
#     scipy 0.14, rasterio 0.11, imagecodecs 0.08, sympy 0.08,
#     numpy 0.07, the 65 others 0.26                              0.92 GB
#   cyseg with its model, the venv's pip                          0.02 GB
#   total                                                         1.85 GB
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

# never root (the App Engine makes /inputs and /outputs writable for any user). uid 1000, freed
# first where the base gives it to another user (Ubuntu 24.04: "ubuntu")
RUN if id -u 1000 >/dev/null 2>&1; then userdel --remove "$(id -nu 1000)"; fi \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin cyseg
USER 1000:1000
ENV HOME=/home/cyseg
WORKDIR /home/cyseg

ENTRYPOINT ["python3", "-m", "cyseg.appengine"]
