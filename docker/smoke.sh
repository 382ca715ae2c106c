#!/usr/bin/env bash
# Build the serving image, make a tiny bundle and index with it, serve them, and check the API end to end.
# Prints the image size and the time from `docker run` to /readyz. Cleans up its containers and files.
#
#   bash docker/smoke.sh            (root; starts a Docker engine and makes a base image if it has to)
# Env: BASE_IMAGE (default: python:3.11-slim-bookworm if pullable, else a local debootstrap image),
#      KEEP_IMAGE=1 to keep clipforge:smoke afterwards, PORT (default 18080).
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-18080}
IMAGE=clipforge:smoke
WORK=$(mktemp -d /tmp/clipforge-smoke.XXXXXX)
chmod 777 "$WORK"
MIRROR_PID=""
log() { printf '[smoke] %s\n' "$*"; }
cleanup() {
  docker rm -f cf-smoke cf-smoke-bad >/dev/null 2>&1 || true
  [ -n "$MIRROR_PID" ] && kill "$MIRROR_PID" 2>/dev/null || true
  rm -f docker/ca/host.crt
  [ "${KEEP_IMAGE:-0}" = 1 ] || docker rmi -f "$IMAGE" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# 1. a Docker engine
if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io; }
  log "starting dockerd"
  (dockerd >/tmp/clipforge-dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start: see /tmp/clipforge-dockerd.log" >&2; exit 1; }
fi

# 2. a base image: the official one if a registry answers, else a local Debian bookworm root
if [ -z "${BASE_IMAGE:-}" ]; then
  if timeout 60 docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
    BASE_IMAGE=python:3.11-slim-bookworm
  else
    BASE_IMAGE=clipforge-base:bookworm
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
      command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }
      log "no registry: building $BASE_IMAGE with debootstrap (a few minutes, once)"
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$WORK/rootfs" \
        http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 || { tail "$WORK/debootstrap.log"; exit 1; }
      tar -C "$WORK/rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
      rm -rf "$WORK/rootfs"
    fi
  fi
fi
log "base image: $BASE_IMAGE"

# 3. where PyTorch comes from: this machine's local wheel mirror (served on loopback) if it has one,
#    else PyTorch's CPU wheel index (the Dockerfile's default)
BUILD_ARGS=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
if [ -d /opt/pypi-more/simple/torch ]; then
  MPORT=$((PORT + 1))
  (cd /opt/pypi-more && exec python3 -m http.server "$MPORT" --bind 127.0.0.1 >/dev/null 2>&1) &
  MIRROR_PID=$!
  BUILD_ARGS+=(--build-arg TORCH_INDEX_URL= --build-arg "PIP_EXTRA_INDEX_URL=http://127.0.0.1:$MPORT/simple")
  log "PyTorch from the local wheel mirror (CUDA build: a much larger image than with the CPU index)"
elif ! curl -fsS --max-time 15 -o /dev/null https://download.pytorch.org/whl/cpu/torch/; then
  BUILD_ARGS+=(--build-arg TORCH_INDEX_URL=)
  log "PyTorch's CPU wheel index is not reachable: PyTorch from PyPI (CUDA build: a much larger image)"
fi

# the host's CA bundle, for pip behind a TLS-intercepting proxy (harmless elsewhere)
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt docker/ca/host.crt

# 4. build
t0=$(date +%s)
docker build --network host -q -f docker/Dockerfile -t "$IMAGE" "${BUILD_ARGS[@]}" . >/dev/null
build_s=$(( $(date +%s) - t0 ))
size=$(docker image inspect "$IMAGE" --format '{{.Size}}')
log "built $IMAGE in ${build_s}s, $((size / 1024 / 1024)) MiB"

# 5. a tiny bundle and index, made with the same image (train and index build through it)
run() { docker run --rm --user "$(id -u):$(id -g)" -e HOME=/work -v "$WORK:/work" "$IMAGE" "$@"; }
run data synth /work/data --train 400 --val 100 --per-class 2 --shard-size 100 >/dev/null
run train smoke --set out_dir=/work/run --set "data.train=['/work/data/train/shard-{000000..000003}.tar']" \
  --set data.zeroshot=/work/data/zeroshot --set train.samples=320 >/dev/null
run index build --bundle /work/run/bundle --data "/work/data/val/shard-000000.tar" --out /work/index >/dev/null
run fuse train synth-questions-3way --set data.bundle=/work/run/bundle --set out_dir=/work/fuse \
  --set data.train=/work/data/questions/3way-train.jsonl --set data.val=/work/data/questions/3way-test.jsonl \
  --set data.cache_dir=/work/cache --set fit.epochs=5 --set name=yes-no-absent >/dev/null
log "bundle, index and a fusion head made inside the image"

# 6. serve and time to ready
t0=$(date +%s.%N)
docker run -d --name cf-smoke -p "127.0.0.1:$PORT:8000" -v "$WORK/run/bundle:/models/bundle:ro" \
  -v "$WORK/index:/models/index" -v "$WORK/fuse/head:/models/heads/yes-no-absent:ro" \
  -e CLIPFORGE_HEADS=/models/heads/yes-no-absent -e CLIPFORGE_API_KEY=smoke-key "$IMAGE" >/dev/null
ready=""
for _ in $(seq 240); do
  if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.25
done
[ -n "$ready" ] || { docker logs cf-smoke | tail -20; echo "not ready" >&2; exit 1; }
ready_s=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
log "ready in ${ready_s}s"
[ "$(docker exec cf-smoke id -u)" != 0 ] || { echo "container runs as root" >&2; exit 1; }

# 7. classify an image, search by text, ask the fusion head about an image
python3 - "$PORT" "$WORK/data/zeroshot" <<'PY'
import json, pathlib, sys, urllib.request, uuid
port, zs = sys.argv[1], pathlib.Path(sys.argv[2])
img = next((zs / "red_square").glob("*.jpg")).read_bytes()
b = uuid.uuid4().hex
body = b"".join([f"--{b}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"x.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".encode(), img,
                 f"\r\n--{b}\r\nContent-Disposition: form-data; name=\"labels\"\r\n\r\nred square\r\n".encode(),
                 f"--{b}\r\nContent-Disposition: form-data; name=\"labels\"\r\n\r\nblue circle\r\n--{b}--\r\n".encode()])
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/classify", data=body, headers={"Content-Type": f"multipart/form-data; boundary={b}"})
out = json.load(urllib.request.urlopen(req, timeout=30))
labels = out["results"][0]["labels"]
assert {x["label"] for x in labels} == {"red square", "blue circle"}, out
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/search", data=json.dumps({"text": "a red square", "k": 3}).encode(),
                             headers={"Content-Type": "application/json"})
hits = json.load(urllib.request.urlopen(req, timeout=30))["results"]
assert len(hits) == 3 and all("score" in h for h in hits), hits
b = uuid.uuid4().hex
body = b"".join([f"--{b}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"x.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n".encode(), img,
                 f"\r\n--{b}\r\nContent-Disposition: form-data; name=\"texts\"\r\n\r\nis the square red?\r\n--{b}--\r\n".encode()])
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/heads/yes-no-absent/predict", data=body,
                             headers={"Content-Type": f"multipart/form-data; boundary={b}"})
answer = json.load(urllib.request.urlopen(req, timeout=30))
assert answer["labels"] == ["yes", "no", "absent"] and len(answer["results"]) == 1, answer
heads = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/heads", timeout=30))
assert [h["name"] for h in heads["heads"]] == ["yes-no-absent"], heads
print("[smoke] head 'yes-no-absent', 'is the square red?' about a red square:", answer["results"][0])
print("[smoke] classify:", [(x["label"], round(x["score"], 3)) for x in labels], "| search top-3 captions:", [h.get("caption") for h in hits])
PY

# 8. SIGTERM stops it cleanly, and requests in flight at that moment still get their answers
t0=$(date +%s)
python3 - "$PORT" <<'PY'
import json, subprocess, sys, threading, time, urllib.request
port, results = sys.argv[1], []
def embed(i):
    texts = [f"text {i} {j}" for j in range(64)]  # 64 new texts each: several encoder batches in flight
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embed", data=json.dumps({"texts": texts}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        results.append(urllib.request.urlopen(req, timeout=60).status)
    except Exception as exn:
        results.append(repr(exn))
threads = [threading.Thread(target=embed, args=(i,)) for i in range(8)]
for t in threads: t.start()
time.sleep(0.3)
subprocess.run(["docker", "kill", "--signal", "TERM", "cf-smoke"], check=True, capture_output=True)
for t in threads: t.join()
assert results == [200] * 8, results
print("[smoke] 8 requests in flight at SIGTERM all answered 200")
PY
docker wait cf-smoke >/dev/null
code=$(docker inspect cf-smoke --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || { docker logs cf-smoke | tail; echo "exit code $code after SIGTERM" >&2; exit 1; }
log "stopped on SIGTERM in $(( $(date +%s) - t0 ))s with exit code 0"

# 9. a missing bundle is refused with a clear line
if docker run --name cf-smoke-bad -v "$WORK/nothing:/models/bundle:ro" "$IMAGE" >/dev/null 2>&1; then
  echo "started without a bundle" >&2; exit 1
fi
log "missing bundle refused: $(docker logs cf-smoke-bad 2>&1 | grep -i -m1 'error')"
echo "SMOKE OK: image $((size / 1024 / 1024)) MiB, build ${build_s}s, ready ${ready_s}s"
