#!/usr/bin/env bash
# The qr-code filter's reader next to zxing-cpp and OpenCV's QRCodeDetector on photos
# with QR codes planted in them (BENCHMARKS.md (h)):
#   scripts/bench-qr.sh [N]   N photos of each kind (default 20), from
#                             `reference.py qr-samples`, plus 25 photos without a code
# Prints, per kind, the codes planted, those each reader read (and, here, the codes found
# read or not) and the median time per photo on one thread, the fastest of three runs,
# decoding the file not included. QR_READ=PATH runs another build's `qr_read` example
# in place of this one's (how the reader it replaced was measured). Needs what
# scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 filters/images/reference/reference.py qr-samples "$dir" "$n" > /dev/null
reader=${QR_READ:-}
if [ -z "$reader" ]; then
  cargo build --release --locked -q -p sekisho-filters-images --example qr_read
  reader=target/release/examples/qr_read
fi
mapfile -t files < <(python3 -c '
import json, sys
for t in json.load(open(sys.argv[1] + "/truth.json")):
    print(sys.argv[1] + "/" + t["file"])' "$dir")
python3 filters/images/reference/reference.py qr-read --opencv "${files[@]}" > "$dir/theirs.jsonl"
"$reader" "${files[@]}" > "$dir/ours.jsonl"
python3 - "$dir" <<'PY'
import json, statistics, sys
d = sys.argv[1]
truth = json.load(open(d + "/truth.json"))
ours = [json.loads(l) for l in open(d + "/ours.jsonl")]
theirs = [json.loads(l) for l in open(d + "/theirs.jsonl")]
rows = {}
for t, o, r in zip(truth, ours, theirs):
    k = rows.setdefault(t["kind"], {"n": 0, "planted": 0, "read": 0, "found": 0, "zxing": 0,
                                    "opencv": 0, "wrong": 0, "ms": [], "zxing_ms": [], "opencv_ms": []})
    planted = set(t["texts"])
    k["n"] += 1
    k["planted"] += len(planted)
    k["read"] += len(planted & set(o["texts"]))
    k["found"] += o["found"]
    k["zxing"] += len(planted & set(r["zxing"]))
    k["opencv"] += len(planted & set(r["opencv"]))
    k["wrong"] += len(set(o["texts"]) - planted) + len(set(r["zxing"]) - planted) + len(set(r["opencv"]) - planted)
    for m in ("ms", "zxing_ms", "opencv_ms"):
        k[m].append(o["ms"] if m == "ms" else r[m])
print("| kind | photos | codes planted | read here (found) | zxing-cpp | OpenCV | ms here | ms zxing-cpp | ms OpenCV |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
tot = {"n": 0, "planted": 0, "read": 0, "found": 0, "zxing": 0, "opencv": 0, "wrong": 0}
for kind, k in rows.items():
    med = lambda m: f"{statistics.median(k[m]):.1f}"
    print(f"| {kind} | {k['n']} | {k['planted']} | {k['read']} ({k['found']}) | {k['zxing']} | "
          f"{k['opencv']} | {med('ms')} | {med('zxing_ms')} | {med('opencv_ms')} |")
    for x in tot:
        tot[x] += k[x]
print(f"| all | {tot['n']} | {tot['planted']} | {tot['read']} ({tot['found']}) | {tot['zxing']} | {tot['opencv']} | | | |")
print(f"texts read that were not planted (all readers): {tot['wrong']}")
PY
