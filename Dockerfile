# cellseg in a container: the package, its workflow (Snakemake) and torch.
#
#   docker build -t cellseg:0.1.0-cpu .                                   # CPU (default)
#   docker build -t cellseg:0.1.0-cuda --build-arg VARIANT=cuda .         # CUDA (GPU nodes)
#   docker run --rm -v "$PWD:/data" -w /data cellseg:0.1.0-cpu cellseg segment scan.tif -o out
#
# VARIANT picks where torch (pinned as in pyproject.toml) comes from: cpu takes
# the CPU-only wheel (about 200 MB), cuda the default Linux wheel from PyPI,
# which carries its CUDA libraries (several GB; the host needs only the NVIDIA
# driver: `docker run --gpus all`). Everything else installs from
# pyproject.toml, so the image has the same pins as `pip install .`.
# apptainer.def builds the same environment for HPC sites (Apptainer).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0

LABEL org.opencontainers.image.title="cellseg" \
      org.opencontainers.image.description="Tiled, seam-exact instance segmentation of large 2D/3D microscopy scans" \
      org.opencontainers.image.licenses="BSD-3-Clause"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLBACKEND=Agg

# procps: `ps` for Snakemake's resource accounting; libgl/glib: OpenCV's runtime
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       procps libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

RUN if [ "$VARIANT" = "cpu" ]; then \
        pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu; \
    elif [ "$VARIANT" = "cuda" ]; then \
        pip install "torch==${TORCH_VERSION}"; \
    else \
        echo "VARIANT must be cpu or cuda, not ${VARIANT}" >&2; exit 1; \
    fi

WORKDIR /opt/cellseg
COPY pyproject.toml README.md ./
COPY cellseg ./cellseg
RUN pip install ".[workflow,distributed]" && cellseg --version

# the workflow itself, for `snakemake -s /opt/cellseg/Snakefile`
COPY Snakefile ./
COPY workflow ./workflow
COPY configs ./configs

WORKDIR /data
CMD ["cellseg", "--help"]
