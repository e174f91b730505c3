#!/usr/bin/env bash
# Run the test suite on a Debian 12 machine: install the real servers the integration tests use
# (when missing; needs root), create .venv if missing, install livesnap[dev,ray], run pytest "$@"
# on two workers.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PACKAGES=(ffmpeg nginx libnginx-mod-rtmp postgresql chromium
  # the cluster test's Redis, which keeps Ray's GCS state so that the head can be replaced
  redis-server
  # RTMPS in the tests: nginx's stream module ends TLS in front of nginx-rtmp
  libnginx-mod-stream
  # the RTSP camera of the tests: GStreamer's RTSP server, driven from the system python3
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav)

system_deps_present() {
  [[ -x /usr/bin/ffmpeg && -x /usr/sbin/nginx && -e /usr/lib/nginx/modules/ngx_rtmp_module.so ]] &&
    [[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] &&
    [[ -x /usr/bin/chromium && -x /usr/bin/redis-server ]] &&
    compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null &&
    compgen -G '/usr/lib/*/girepository-1.0/GstRtspServer-1.0.typelib' >/dev/null &&
    compgen -G '/usr/lib/*/gstreamer-1.0/libgstx264.so' >/dev/null &&
    compgen -G '/usr/lib/*/gstreamer-1.0/libgstx265.so' >/dev/null &&
    /usr/bin/python3 -c 'import gi' 2>/dev/null
}

if ! system_deps_present; then
  if [[ $EUID -ne 0 ]]; then
    echo "scripts/test.sh: missing Debian packages (need: ${PACKAGES[*]}); run as root or install them" >&2
    exit 1
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}"
fi

if [[ ! -x .venv/bin/python ]]; then
  "$(command -v python3.11 || command -v python3)" -m venv .venv
fi
stamp=.venv/.livesnap-dev-installed   # editable install: only pyproject.toml changes need a re-run
if [[ ! -f $stamp || pyproject.toml -nt $stamp || requirements.lock -nt $stamp ]]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,ray]'
  touch "$stamp"
fi

# HTTP-FLV in the tests: node-media-server from npm (it needs Node.js 20 or later)
NMS_VERSION=4.4.3
NMS_PREFIX=.cache/node-media-server-$NMS_VERSION
if [[ ! -f $NMS_PREFIX/node_modules/node-media-server/package.json ]]; then
  if ! command -v npm >/dev/null || ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)'; then
    echo "scripts/test.sh: Node.js 20 or later with npm is needed (node-media-server, the HTTP-FLV origin of the tests)" >&2
    exit 1
  fi
  npm install --prefix "$NMS_PREFIX" --no-audit --no-fund --loglevel=error "node-media-server@$NMS_VERSION"
fi

# The code's own checks before the tests, when the whole suite runs (no pytest arguments):
# ruff's lint and mypy's strict typing of src/; a finding fails the run.
# The whole suite also lists its 25 slowest tests, to see where its time goes.
if [[ $# -eq 0 ]]; then
  .venv/bin/ruff check src tests bench || exit 1
  .venv/bin/mypy --strict src || exit 1
  set -- --durations=25
fi

# Most tests wait on real time (live streams, timeouts, outages), not on the CPU: two workers
# halve the wall time on two cores. Each test file runs whole on one worker (its module
# fixtures stay together); LIVESNAP_TEST_WORKERS=0 runs everything in this process.
exec .venv/bin/python -m pytest -n "${LIVESNAP_TEST_WORKERS:-2}" --dist loadfile "$@"
