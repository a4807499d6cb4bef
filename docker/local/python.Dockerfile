# Stand-in for python:3.11-slim-bookworm: Debian 12's python3 (3.11) with venv and pip, `python`
# on PATH. Built by base-images.sh on its debootstrap image; Debian's mirror is the only source.
ARG DEBIAN_IMAGE=toolbox-sweeps-local/debian:bookworm
FROM ${DEBIAN_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python-is-python3 ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
ENV LANG=C.UTF-8
CMD ["python3"]
