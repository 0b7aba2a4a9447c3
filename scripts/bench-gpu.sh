#!/usr/bin/env bash
# ng-image throughput with dynamic batching next to batch 1, in alternating rounds, on one
# machine: `sekisho filter ng-image` driven by `sekisho bench images` over loopback gRPC.
# Each round also runs the filter on a model that does next to nothing (on the CPU):
# what the machine's cores manage of decoding, pre-processing and gRPC alone, the
# ceiling for the GPU runs. Each row also gives the CPU time per call of the filter and
# of the load generator, which share the machine's cores here. Meant for the GPU machine (BENCHMARKS.md, issue 4); runs
# anywhere.
#
# Here (builds release, stages the binary, the model, sample photos and this script, and
# packs them with the onnxruntime-gpu libraries into .gpu/0..N; SEKISHO_BIN=path packs
# that binary instead of building one):
#   scripts/bench-gpu.sh pack
# On the GPU machine, after unpacking into /tmp/g as DEVELOPERS.md says:
#   bash /tmp/g/bundle/bench-gpu.sh run /tmp/g/bundle [provider] [seconds] [rounds] [batch]
# and what the first calls after a start cost, by --warm-up (check, all):
#   SEKISHO_BIN=/tmp/g/bundle/sekisho MODEL=/tmp/g/bundle/open-nsfw.onnx \
#     PHOTO=/tmp/g/bundle/photos/chelsea.png MAX_BATCH=32 bash /tmp/g/bundle/bench-cold.sh cuda 3
# Anywhere, against a local build (CPU): scripts/bench-gpu.sh run <dir> cpu 5 1 8
# First, unless SCORES=0, each photo's score alone on the provider (on CUDA also with
# --cuda-tf32) next to the CPU's, which `pack` takes.
# SESSIONS="1 2" runs the batched filter with one session, then with two; BATCHED_ARGS
# gives it more flags (e.g. `--cuda-tf32`, or `--batch-sizes every`: the default on CUDA
# pads batches to powers of two).
set -euo pipefail
what=${1:?usage: bench-gpu.sh pack | run <dir> [provider] [seconds] [rounds] [max-batch]}

if [ "$what" = pack ]; then
  cd "$(dirname "$0")/.."
  scripts/setup.sh
  bin=${SEKISHO_BIN:-}
  if [ -z "$bin" ]; then
    cargo build --release --locked -p sekisho-cli --bin sekisho
    bin=target/release/sekisho
  fi
  stage=target/gpu-bundle
  rm -rf "$stage" && mkdir -p "$stage/photos"
  # Without its debug info the binary is a sixth of the size: fewer parts to carry, each a
  # call of the GPU machine's limited time.
  strip -o "$stage/sekisho" "$bin" 2>/dev/null || cp "$bin" "$stage/sekisho"
  cp scripts/bench-gpu.sh scripts/bench-cold.sh "$stage/"
  cp "${SEKISHO_CACHE:-.sekisho/cache}/models/open-nsfw.onnx" "$stage/"
  python3 filters/images/reference/reference.py null-nsfw "$stage/null-nsfw.onnx"
  python3 filters/images/reference/reference.py samples "$stage/photos" > /dev/null
  # The photos' scores on this machine's CPU, for the GPU run to compare its own with;
  # with retina.jpg, which scores far from 0 (0.18), where small changes show.
  python3 filters/images/reference/reference.py large-samples "$stage/large" > /dev/null
  mkdir "$stage/scored"
  cp "$stage"/photos/* "$stage/large/retina.jpg" "$stage/scored/"
  rm -r "$stage/large"
  SEKISHO_LOG=warn "$bin" filter ng-image --listen 127.0.0.1:51490 --model "$stage/open-nsfw.onnx" \
    > "$stage/cpu-filter.log" 2>&1 &
  cpu_filter=$!
  for _ in $(seq 300); do grep -q "listening on" "$stage/cpu-filter.log" && break; sleep 0.2; done
  "$bin" bench images --filter http://127.0.0.1:51490 --scores "$stage"/scored/* \
    > "$stage/cpu-scores.jsonl"
  kill $cpu_filter; wait $cpu_filter 2>/dev/null || true
  rm "$stage/cpu-filter.log"
  # pack.sh takes paths relative to the repository root; the bundle lands in /tmp/g/bundle.
  mv "$stage" bundle
  trap 'rm -rf bundle' EXIT
  ../shared/gpu/pack.sh bundle
  exit 0
fi

dir=${2:?the directory with sekisho, open-nsfw.onnx and photos/}
provider=${3:-cuda}
secs=${4:-10}
rounds=${5:-3}
batch=${6:-32}
concurrency=${CONCURRENCY:-256}
# How long a batch's first item waits for more (the filter's default is 0).
MAX_WAIT=${MAX_WAIT:-2ms}
bin=$dir/sekisho
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
export SEKISHO_LOG=warn,ort=error
onmissing=refuse
[ "$provider" = cpu ] && onmissing=fallback

rate() { python3 -c 'import json,sys; print(round(json.loads(sys.stdin.read().strip().splitlines()[-1])["requests_per_s"], 1))'; }
# Mean items per batch from the filter's own metrics.
mean_batch() {
  python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics").read().decode()
v = {}
for line in text.splitlines():
    for k in ("sekisho_filter_batch_size_sum", "sekisho_filter_batch_size_count"):
        if line.startswith(k + "{"):
            v[k] = v.get(k, 0.0) + float(line.rsplit(" ", 1)[1])
n = v.get("sekisho_filter_batch_size_count", 0.0)
print(round(v.get("sekisho_filter_batch_size_sum", 0.0) / n, 1) if n else 0)
PY
}

# The filter's own estimate of a batch's time at the end of a round (what its admission
# uses, sekisho_filter_run_cost_seconds): "fixed ms + ms an item" for 224x224x3 items.
run_cost() {
  python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics").read().decode()
part = {}
for line in text.splitlines():
    if line.startswith("sekisho_filter_run_cost_seconds{"):
        part[line.split('part="')[1].split('"')[0]] = float(line.rsplit(" ", 1)[1])
print(f"{part.get('fixed', 0) * 1e3:.2f}+{part.get('per_value', 0) * 224 * 224 * 3 * 1e3:.3f}")
PY
}

# Scores first (SCORES=0 skips them): each photo alone through the filter on $provider,
# float32 and (on CUDA) with --cuda-tf32, against the scores `pack` took on the CPU.
scores_on() { # label, then the filter's extra flags
  local label=$1 log="$tmp/scores-$1.log"
  shift
  $bin filter ng-image --listen 127.0.0.1:51190 --model "$dir/open-nsfw.onnx" \
    --provider "$provider" --on-missing-cuda $onmissing --warm-up check --max-batch 1 \
    "$@" > "$log" 2>&1 &
  local pid=$!
  for _ in $(seq 3000); do grep -q "listening on" "$log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.2; done
  grep -q "listening on" "$log" || { cat "$log"; return 1; }
  $bin bench images --filter http://127.0.0.1:51190 --scores "$dir"/scored/* > "$tmp/scores-$label.jsonl"
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$dir/cpu-scores.jsonl" "$tmp/scores-$label.jsonl" "$provider, $label" <<'PY'
import json, os, sys
load = lambda f: {os.path.basename(r["image"]): r["score"] for r in map(json.loads, open(f))}
cpu, here = load(sys.argv[1]), load(sys.argv[2])
diff = {k: abs(here[k] - cpu[k]) for k in cpu}
worst = max(diff, key=diff.get)
print(f"scores on {sys.argv[3]} against the CPU's, {len(diff)} photos: largest difference "
      f"{diff[worst]:.6f} ({worst}: {here[worst]:.6f} vs {cpu[worst]:.6f})")
PY
}
if [ "${SCORES:-1}" = 1 ] && [ -f "$dir/cpu-scores.jsonl" ]; then
  scores_on float32
  [ "$provider" = cuda ] && scores_on tf32 --cuda-tf32
fi

# Configurations, each "max-batch:sessions" or "null": the batched one once per count of
# sessions in SESSIONS (e.g. SESSIONS="1 2": does a second session on the GPU, copying one
# batch while another runs, pay?), then batch 1 and the null model.
configs=()
for n in ${SESSIONS:-1}; do configs+=("$batch:$n"); done
[[ " ${configs[*]} " == *" 1:1 "* ]] || configs+=("1:1")
configs+=(null)
# Calls the filter has answered (sekisho_filter_requests_total, every code).
answered() {
  python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics").read().decode()
print(int(sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
              if l.startswith("sekisho_filter_requests_total{"))))
PY
}
# A process's CPU time so far, in clock ticks (user + system).
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -A got means costs cpu gen
port=51200
for r in $(seq "$rounds"); do
  for c in "${configs[@]}"; do
    port=$((port + 2))
    if [ "$c" = null ]; then
      # Everything but the model: as many CPU sessions as cores, batches as large.
      model=(--model "$dir/null-nsfw.onnx" --provider cpu --workers "$(nproc)"
        --intra-threads 1 --max-batch "$batch")
    else
      model=(--model "$dir/open-nsfw.onnx" --provider "$provider"
        --on-missing-cuda $onmissing --workers "${c#*:}" --max-batch "${c%:*}")
      # shellcheck disable=SC2206 # flags, split on spaces
      [ "$c" != 1:1 ] && model+=(${BATCHED_ARGS:-})
    fi
    log="$tmp/filter-${c/:/x}.log"
    $bin filter ng-image --listen 127.0.0.1:$port "${model[@]}" \
      --max-wait "$MAX_WAIT" --metrics-listen 127.0.0.1:$((port + 1)) > "$log" 2>&1 &
    pid=$!
    for _ in $(seq 3000); do grep -q "listening on" "$log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.2; done
    grep -q "listening on" "$log" || { cat "$log"; exit 1; }
    t0=$(ticks $pid); n0=$(answered 127.0.0.1:$((port + 1)))
    # The load generator's own CPU time goes to $tmp/gen (it shares the machine's cores).
    got[$c]+="$(python3 -c 'import resource, subprocess, sys
out = subprocess.run(sys.argv[2:], stdout=subprocess.PIPE, check=True).stdout
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(str(r.ru_utime + r.ru_stime))
sys.stdout.buffer.write(out)' "$tmp/gen" $bin bench images --filter http://127.0.0.1:$port \
      --concurrency "$concurrency" --duration "${secs}s" --warmup 2s --json "$dir"/photos/* | rate) "
    t1=$(ticks $pid); n1=$(answered 127.0.0.1:$((port + 1)))
    # CPU milliseconds per call answered, the filter's and the load generator's.
    cpu[$c]+="$(python3 -c "print(round(($t1 - $t0) / $hz * 1e3 / max($n1 - $n0, 1), 2))") "
    gen[$c]+="$(python3 -c "print(round(float(open('$tmp/gen').read()) * 1e3 / max($n1 - $n0, 1), 2))") "
    means[$c]+="$(mean_batch 127.0.0.1:$((port + 1))) "
    costs[$c]+="$(run_cost 127.0.0.1:$((port + 1))) "
    kill $pid; wait $pid 2>/dev/null || true
  done
done
rows=$(for c in "${configs[@]}"; do printf '%s|%s|%s|%s|%s|%s\n' "$c" "${got[$c]}" "${means[$c]}" "${costs[$c]}" "${cpu[$c]}" "${gen[$c]}"; done)
python3 - "$provider" "$concurrency" "$(nproc)" "$rows" <<'PY'
import sys
provider, conc, cores, rows = sys.argv[1:5]
rate = {}
for line in rows.strip().splitlines():
    c, got, mean, cost, cpu, gen = line.split("|")
    v = [float(x) for x in got.split()]
    rate[c] = sum(v) / len(v)
    cpu = [float(x) for x in cpu.split()]
    gen = [float(x) for x in gen.split()]
    use = (f"CPU ms per call, the filter {cpu}, the load generator {gen}"
           f" (for 3,000/s the filter alone needs {3 * min(cpu):.1f} cores at the least)")
    if c == "null":
        print(f"the same photos through a model that does next to nothing, {cores} CPU sessions: "
              f"{rate[c]:.1f} images/s {v} (decoding, pre-processing and gRPC alone); {use}")
        continue
    b, n = c.split(":")
    print(f"ng-image on {provider}, concurrency {conc}, max-batch {b}, {n} session(s): "
          f"{rate[c]:.1f} images/s {v}, mean batch {mean.split()}, the filter's estimate of a "
          f"batch at the end of each round (fixed ms + ms an item) {cost.split()}; {use}")
for c in rate:
    if c not in ("null", "1:1"):
        print(f"max-batch:sessions {c} against batch 1: {rate[c] / rate['1:1']:.2f}x")
PY
