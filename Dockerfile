# One image for both gpucap roles:
#   docker run IMAGE agent run --ledger https://ledger:8470 ...   (node agent; needs the NVIDIA runtime)
#   docker run IMAGE ledger serve --host 0.0.0.0                  (ledger)
# Configuration comes from flags or GPUCAP_* variables (deploy/systemd/gpucap.env.example).

FROM python:3.11-slim AS build
WORKDIR /src
# gpucap/agent, gpucap/ledger and gpucap/exporters are symlinks to these top-level folders (COPY
# keeps them as links; setup.py stops the build if they do not resolve). The demo fleet is
# package data (gpucap/data/demo). tests/deploy/test_deploy_dockerfile.py builds this context.
COPY pyproject.toml setup.py README.md LICENSE ./
COPY gpucap ./gpucap
COPY agent ./agent
COPY ledger ./ledger
COPY exporters ./exporters
# gpucap's wheel and the wheels of its dependencies with the ledger extra: the runtime stage
# installs from them offline.
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels '.[ledger]'

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 gpucap \
 && useradd --system --uid 10001 --gid gpucap --home-dir /var/lib/gpucap --shell /usr/sbin/nologin gpucap \
 && install -d -o gpucap -g gpucap -m 0700 /var/lib/gpucap /var/lib/gpucap-agent /var/lib/gpucap-ledger
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index --find-links /wheels 'gpucap[ledger]' \
 && rm -rf /wheels
WORKDIR /var/lib/gpucap
USER 10001:10001
# 8470: ledger API and its /metrics; 9470: the agent's metrics (--metrics-port).
EXPOSE 8470 9470
ENTRYPOINT ["gpucap"]
CMD ["--help"]
