"""Checks the Helm chart charts/sekisho with the real Helm engine and the Kubernetes schemas.

- `helm lint --strict` through helm-python-sdk (Helm's Go SDK as a C library; no helm
  binary is needed);
- renders the chart for the default values and for gpu-postgres.yaml, and validates every
  manifest against the Kubernetes OpenAPI schemas with kubernetes-validate (strict: unknown
  fields are errors). The Prometheus Operator kinds (ServiceMonitor, PrometheusRule) have
  no schema there; they are checked against the fields this file names;
- checks what the manifests say (GPU requests, discovery names that match the Services,
  the database, the network policies, security contexts);
- feeds the rendered gateway and ui configurations to the real `sekisho` binary
  (`--check`), so that the chart cannot write a configuration the code refuses;
- and checks that bad values are refused with a message naming them.

Usage: python charts/tests/check.py SEKISHO_BINARY
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sekisho"
KUBE_VERSION = "1.33.0"
NAMESPACE = "moderation"
RELEASE = "sekisho"

failures: list[str] = []

UNRENDERED = re.compile(r"\{\{-?\s*(\.|include|template|toYaml|if\s|else|end|range|with|\$\w+\s*:?=)")


def check(cond: bool, what: str) -> None:
    if not cond:
        failures.append(what)
        print(f"FAIL {what}")


def render(values: dict) -> list[dict]:
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            check("port-forward" in text or "https://" in text, f"{path}: says how to reach the UI")
            continue
        # Prometheus's `{{ $labels.x }}` and Grafana's `{{chain}}` are meant to stay.
        check(not UNRENDERED.search(text), f"{path}: no Helm template left unrendered")
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__path"] = path
                docs.append(doc)
    return docs


# The names of every metric the Rust code records (they are all written out as literals).
def exported_metrics() -> set[str]:
    names: set[str] = set()
    for path in ROOT.glob("*/**/*.rs"):
        if "target" in path.parts or "tests" in path.parts:
            continue
        names |= set(re.findall(r'"(sekisho_[a-z_]+)"', path.read_text()))
    return names


# Histograms get buckets by name suffix (jsonproxy/src/metrics.rs); any other histogram
# is rendered as a summary, which has no `_bucket` series to take a quantile of.
BUCKETED = ("_seconds", "_score", "_batch_size")


def check_metric_names(exprs: list[str], recorded: set[str]) -> None:
    """What the dashboard and the alerts query is what the code exports."""
    exported = exported_metrics()
    check(len(exported) >= 10, f"the metric names are found in the Rust sources: {exported}")
    for expr in exprs:
        for name in re.findall(r"\b(sekisho_[a-z_]+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            check(name in exported or (base != name and base in exported),
                  f"`{name}` in `{expr}` is not a metric the code exports")
            if name.endswith("_bucket"):
                check(base.endswith(BUCKETED), f"`{base}` has no histogram buckets (`{expr}`)")
        for name in re.findall(r"\b(sekisho:[a-z_0-9:]+)", expr):
            check(name in recorded, f"`{name}` in `{expr}` is not a recording rule")


def kinds(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


# The Prometheus Operator's CRDs are not in kubernetes-validate; these are the fields the
# operator requires and this chart uses.
def validate_crd(doc: dict) -> list[str]:
    problems = []
    spec = doc.get("spec", {})
    if doc["kind"] == "ServiceMonitor":
        if not spec.get("selector", {}).get("matchLabels"):
            problems.append("spec.selector.matchLabels missing")
        for ep in spec.get("endpoints", []):
            if not ep.get("port"):
                problems.append("endpoint without port")
        if not spec.get("endpoints"):
            problems.append("no endpoints")
    elif doc["kind"] == "PodMonitor":
        if not spec.get("selector", {}).get("matchLabels"):
            problems.append("spec.selector.matchLabels missing")
        if not spec.get("podMetricsEndpoints"):
            problems.append("no podMetricsEndpoints")
        for ep in spec.get("podMetricsEndpoints", []):
            if not ep.get("port"):
                problems.append("podMetricsEndpoint without port")
    elif doc["kind"] == "PrometheusRule":
        for g in spec.get("groups", []):
            if not g.get("name"):
                problems.append("group without name")
            for r in g.get("rules", []):
                if ("alert" in r) == ("record" in r):
                    problems.append(f"rule needs exactly one of alert/record: {r}")
                expr = r.get("expr", "")
                if not expr or expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                    problems.append(f"unbalanced expr in {r.get('alert') or r.get('record')}")
                if "for" in r and not str(r["for"])[-1] in "smh":
                    problems.append(f"bad for: {r['for']}")
        if not spec.get("groups"):
            problems.append("no groups")
    else:
        problems.append(f"unknown custom kind {doc['kind']}")
    return problems


def validate_all(docs: list[dict], label: str) -> None:
    for d in docs:
        path = d.pop("__path")
        name = f"{label}: {path}: {d['kind']}/{d['metadata']['name']}"
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            for p in validate_crd(d):
                check(False, f"{name}: {p}")
            continue
        try:
            kubernetes_validate.validate(d, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            check(False, f"{name}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            check(False, f"{name}: no schema: {e}")
        d["__path"] = path


def containers(deploy: dict) -> list[dict]:
    return deploy["spec"]["template"]["spec"]["containers"]


def common_checks(docs: list[dict], label: str) -> None:
    deploys = kinds(docs, "Deployment")
    for name, d in deploys.items():
        pod = d["spec"]["template"]["spec"]
        check(pod["securityContext"].get("runAsNonRoot") is True, f"{label}: {name} runs as non-root")
        check(pod.get("automountServiceAccountToken") is False, f"{label}: {name} mounts no API token")
        for c in containers(d):
            sc = c["securityContext"]
            check(sc.get("readOnlyRootFilesystem") is True, f"{label}: {name} has a read-only root")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{label}: {name} drops capabilities")
            check("readinessProbe" in c and "livenessProbe" in c, f"{label}: {name} has probes")
            check("limits" in c["resources"], f"{label}: {name} has resource limits")
    pdbs = kinds(docs, "PodDisruptionBudget")
    for name in deploys:
        if name.endswith("-chainstore") and "PersistentVolumeClaim" in {d["kind"] for d in docs}:
            continue  # one SQLite replica: a PDB would block every node drain
        check(name in pdbs, f"{label}: {name} has a PodDisruptionBudget")

    # Discovery: the gateway resolves exactly the SRV names of the filters' headless Services.
    cm = kinds(docs, "ConfigMap")[f"{RELEASE}-gateway"]
    gw = yaml.safe_load(cm["data"]["gateway.yaml"])
    services = kinds(docs, "Service")
    filter_deploys = {n: d for n, d in deploys.items() if
                      d["spec"]["template"]["metadata"]["labels"].get("sekisho.io/role") == "filter"}
    names = {n["srv"]: n["filter"] for n in gw["discovery"].get("dns", {}).get("names", [])}
    expected = {}
    for n, d in filter_deploys.items():
        svc = services[n]
        check(svc["spec"].get("clusterIP") == "None", f"{label}: {n} Service is headless")
        check(svc["spec"]["ports"][0]["name"] == "grpc", f"{label}: {n} Service port is named grpc")
        filt = d["spec"]["template"]["metadata"]["annotations"]["sekisho.io/filter"]
        c = containers(d)[0]
        check(c["args"][:2] == ["filter", filt], f"{label}: {n} runs `sekisho filter {filt}`")
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        metrics_at = c["args"][c["args"].index("--metrics-listen") + 1] if "--metrics-listen" in c["args"] else ""
        check(metrics_at == f"0.0.0.0:{ports.get('metrics')}", f"{label}: {n} serves /metrics on its metrics port")
        expected[f"_grpc._tcp.{n}.{NAMESPACE}.svc.cluster.local"] = filt
    check(names == expected, f"{label}: gateway DNS names {names} == filter Services {expected}")
    check(gw["chainstore"] == f"http://{RELEASE}-chainstore:7070", f"{label}: gateway follows the chainstore")

    # Only the ui takes traffic from anywhere.
    for name, np in kinds(docs, "NetworkPolicy").items():
        rules = np["spec"]["ingress"]
        open_to_all = any("from" not in r for r in rules)
        check(open_to_all == name.endswith("-ui"), f"{label}: NetworkPolicy {name} open to all only for the ui")
    covered = {json.dumps(np["spec"]["podSelector"]["matchLabels"], sort_keys=True)
               for np in kinds(docs, "NetworkPolicy").values()}
    for name, d in deploys.items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        check(any(all(labels.get(k) == v for k, v in json.loads(sel).items()) for sel in covered),
              f"{label}: {name} is covered by a NetworkPolicy")
    ui_svc = services[f"{RELEASE}-ui"]
    check(all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services.values()),
          f"{label}: no Service other than ClusterIP by default")
    check(ui_svc["spec"]["ports"][0]["port"] == 8000, f"{label}: ui on 8000")
    ui_env = {e["name"]: e.get("value") for e in containers(deploys[f"{RELEASE}-ui"])[0]["env"]}
    check(ui_env.get("SEKISHO_UI__SIGN_IN_LIMIT__FAILURES") == "5",
          f"{label}: the ui locks a name after 5 failed sign-ins")


def run_binary(binary: str, docs: list[dict], label: str) -> None:
    """The rendered gateway and ui configurations, checked by the code that reads them."""
    with tempfile.TemporaryDirectory() as tmp:
        gw_file = Path(tmp) / "gateway.yaml"
        gw_file.write_text(kinds(docs, "ConfigMap")[f"{RELEASE}-gateway"]["data"]["gateway.yaml"])
        r = subprocess.run([binary, "gateway", "--config", str(gw_file), "--check"],
                           capture_output=True, text=True)
        check(r.returncode == 0, f"{label}: sekisho gateway --check: {r.stdout}{r.stderr}")

        ui = kinds(docs, "Deployment")[f"{RELEASE}-ui"]
        env = {e["name"]: e["value"] for e in containers(ui)[0]["env"] if "value" in e}
        secrets = kinds(docs, "Secret")
        ui_file = Path(tmp) / "ui.yaml"
        if f"{RELEASE}-ui" in secrets:
            ui_file.write_text(secrets[f"{RELEASE}-ui"]["stringData"]["ui.yaml"])
        else:
            ui_file.write_text("users: []\ntokens: []\n")
        r = subprocess.run([binary, "ui", "--config", str(ui_file), "--check"],
                           capture_output=True, text=True, env={**os.environ, **env})
        check(r.returncode == 0, f"{label}: sekisho ui --check: {r.stdout}{r.stderr}")


def refused(values: dict, needle: str) -> None:
    try:
        render(values)
    except helm.HelmError as e:
        check(needle in str(e), f"bad values {values}: message {str(e)!r} names {needle!r}")
        return
    check(False, f"bad values {values} were accepted")


def main() -> int:
    binary = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target" / "debug" / "sekisho")
    print(f"helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {KUBE_VERSION}")

    gpu_values = yaml.safe_load((ROOT / "charts" / "tests" / "gpu-postgres.yaml").read_text())
    for label, values in [("default", {}), ("gpu-postgres", gpu_values)]:
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v" + KUBE_VERSION)
        for m in report["messages"]:
            check(m["severity"] < 2, f"{label}: helm lint: {m['path']}: {m['error']}")
        check(not report["errors"], f"{label}: helm lint errors {report['errors']}")

    docs = render({})
    validate_all(docs, "default")
    common_checks(docs, "default")
    run_binary(binary, docs, "default")
    check("PersistentVolumeClaim" in {d["kind"] for d in docs}, "default: SQLite on a PVC")
    check(not any(d["apiVersion"].startswith("monitoring.coreos.com/") for d in docs),
          "default: no Prometheus Operator objects unless asked")
    text = yaml.safe_dump_all(docs)
    check("nvidia.com/gpu" not in text, "default: no GPU requested")
    for f in ["face-detect", "ng-image"]:
        sp = containers(kinds(docs, "Deployment")[f"{RELEASE}-{f}"])[0]["startupProbe"]
        check(sp["periodSeconds"] * sp["failureThreshold"] == 120,
              f"default: {f} has 120 s to load its model on the CPU: {sp}")
    cs = kinds(docs, "Deployment")[f"{RELEASE}-chainstore"]
    check(cs["spec"]["strategy"]["type"] == "Recreate", "default: the SQLite chainstore is recreated, not rolled")
    print(f"default: {len(docs)} manifests")

    docs = render(gpu_values)
    validate_all(docs, "gpu-postgres")
    common_checks(docs, "gpu-postgres")
    run_binary(binary, docs, "gpu-postgres")
    deploys = kinds(docs, "Deployment")
    for f, gpus in [("face-detect", 2), ("ng-image", 1)]:
        d = deploys[f"{RELEASE}-{f}"]
        c = containers(d)[0]
        check(c["resources"]["limits"].get("nvidia.com/gpu") == gpus, f"gpu-postgres: {f} requests {gpus} GPU(s)")
        # With more than one, a session on each; one GPU is device 0, the default.
        devices = c["args"][c["args"].index("--device-id") + 1] if "--device-id" in c["args"] else None
        check(devices == (",".join(map(str, range(gpus))) if gpus > 1 else None),
              f"gpu-postgres: {f} runs on each of its {gpus} GPU(s): --device-id {devices}")
        check(c["resources"]["limits"].get("memory") == "2Gi", f"gpu-postgres: {f} keeps its memory limit")
        check("--provider" in c["args"] and c["args"][c["args"].index("--provider") + 1] == "cuda",
              f"gpu-postgres: {f} runs on CUDA")
        check(c["args"][c["args"].index("--on-missing-cuda") + 1] == "refuse",
              f"gpu-postgres: {f} refuses to start without CUDA")
        sp = c["startupProbe"]
        check(sp["periodSeconds"] * sp["failureThreshold"] == 600,
              f"gpu-postgres: {f} has 600 s to load and warm its model on the GPU: {sp}")
        pod = d["spec"]["template"]["spec"]
        check(pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, f"gpu-postgres: {f} on GPU nodes")
        check(any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), f"gpu-postgres: {f} tolerates GPU taints")
    ng = containers(deploys[f"{RELEASE}-ng-image"])[0]["args"]
    check(ng[ng.index("--max-batch") + 1] == "64", "gpu-postgres: ng-image batches up to 64")
    check("--gpu-mem-limit" in ng and ng[ng.index("--gpu-mem-limit") + 1] == "20GiB",
          "gpu-postgres: ng-image's GPU memory limit is passed")
    fd = containers(deploys[f"{RELEASE}-face-detect"])[0]["args"]
    check("--gpu-mem-limit" not in fd, "gpu-postgres: no GPU memory limit unless asked")
    qr = containers(deploys[f"{RELEASE}-qr-code"])[0]
    check("nvidia.com/gpu" not in qr["resources"]["limits"], "gpu-postgres: qr-code needs no GPU")
    check(f"{RELEASE}-keywords" not in deploys, "gpu-postgres: a disabled filter is not deployed")
    check("PersistentVolumeClaim" not in {d["kind"] for d in docs}, "gpu-postgres: no PVC with PostgreSQL")
    cs = containers(deploys[f"{RELEASE}-chainstore"])[0]
    db = next(e for e in cs["env"] if e["name"] == "SEKISHO_DATABASE")
    check(db.get("valueFrom", {}).get("secretKeyRef") == {"name": "sekisho-postgres", "key": "url"},
          "gpu-postgres: the database URL comes from the Secret")
    check(deploys[f"{RELEASE}-chainstore"]["spec"]["replicas"] == 2, "gpu-postgres: two chainstores")
    check("replicas" not in deploys[f"{RELEASE}-gateway"]["spec"], "gpu-postgres: the HPA owns the gateway's replicas")
    check(f"{RELEASE}-gateway" in kinds(docs, "HorizontalPodAutoscaler"), "gpu-postgres: gateway HPA")
    gw = yaml.safe_load(kinds(docs, "ConfigMap")[f"{RELEASE}-gateway"]["data"]["gateway.yaml"])
    check(gw["outlier"] == {"consecutive_failures": 3}, "gpu-postgres: extraConfig reaches the gateway")
    check(f"{RELEASE}-ui" in kinds(docs, "Ingress"), "gpu-postgres: the ui has an Ingress")
    check(list(kinds(docs, "ServiceMonitor")) == [f"{RELEASE}-gateway"], "gpu-postgres: ServiceMonitor")
    pm = kinds(docs, "PodMonitor").get(f"{RELEASE}-filters", {})
    filter_pod_labels = [d["spec"]["template"]["metadata"]["labels"] for n, d in deploys.items()
                         if d["spec"]["template"]["metadata"]["labels"].get("sekisho.io/role") == "filter"]
    check(bool(filter_pod_labels) and all(
        pm.get("spec", {}).get("selector", {}).get("matchLabels", {"-": "-"}).items() <= l.items()
        for l in filter_pod_labels), "gpu-postgres: the PodMonitor selects every filter pod")
    check([e.get("port") for e in pm.get("spec", {}).get("podMetricsEndpoints", [])] == ["metrics"],
          "gpu-postgres: the PodMonitor scrapes the filters' metrics port")
    rules = kinds(docs, "PrometheusRule")[RELEASE]
    alerts = {r["alert"] for g in rules["spec"]["groups"] for r in g["rules"] if "alert" in r}
    check({"SekishoModerateErrors", "SekishoModerateLatencyHigh", "SekishoApproveRateDrift",
           "SekishoFilterPositiveRateDrift", "SekishoFilterErrors", "SekishoFilterNoReadyEndpoint",
           "SekishoFilterQueueFull"} <= alerts,
          f"gpu-postgres: the alerts are there: {alerts}")
    # The queue-full alert reads the filter pods' own metrics, named by pod.
    qf = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]
          if r.get("alert") == "SekishoFilterQueueFull"]
    pods = re.findall(r'pod=~"([^"]+)"', qf[0]) if qf else []
    filter_deploys = [n for n, d in deploys.items()
                      if d["spec"]["template"]["metadata"]["labels"].get("sekisho.io/role") == "filter"]
    check(len(pods) == 1 and bool(filter_deploys)
          and all(re.fullmatch(pods[0], f"{n}-7c9d8b6f5-x2x4q") for n in filter_deploys)
          and not re.fullmatch(pods[0], "other-release-ng-image-7c9d8b6f5-x2x4q"),
          f"gpu-postgres: the queue-full alert's pod pattern {pods} matches the filter pods {filter_deploys}")
    # The CPU-fallback alert names exactly the filters that run on a GPU.
    on_cpu = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]
              if r.get("alert") == "SekishoFilterOnCpu"]
    gpu_filters = sorted(n for n, f in gpu_values["filters"].items() if f.get("gpu", {}).get("enabled"))
    named = re.findall(r'filter=~"([^"]+)"', on_cpu[0]) if on_cpu else []
    check(bool(gpu_filters) and named == ["|".join(gpu_filters)] and 'execution_provider="cpu"' in on_cpu[0],
          f"gpu-postgres: the CPU-fallback alert {on_cpu} names the GPU filters {gpu_filters}")
    dash = kinds(docs, "ConfigMap")[f"{RELEASE}-dashboard"]
    panels = json.loads(dash["data"]["sekisho.json"])["panels"]
    check(len(panels) >= 8, "gpu-postgres: the Grafana dashboard parses and has its panels")
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    rule_exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    check_metric_names(exprs + rule_exprs, {r["record"] for g in rules["spec"]["groups"]
                                            for r in g["rules"] if "record" in r})
    gwnp = kinds(docs, "NetworkPolicy")[f"{RELEASE}-gateway"]
    check(any("namespaceSelector" in p for p in gwnp["spec"]["ingress"][0]["from"]),
          "gpu-postgres: Prometheus may scrape the gateway")
    print(f"gpu-postgres: {len(docs)} manifests")

    # Discovery through the Kubernetes API: a read-only Role on pods, bound to the
    # gateway's ServiceAccount, the only pod that mounts a token.
    docs = render({"gateway": {"discovery": "kubernetes"}})
    validate_all(docs, "kubernetes-discovery")
    run_binary(binary, docs, "kubernetes-discovery")
    gw = yaml.safe_load(kinds(docs, "ConfigMap")[f"{RELEASE}-gateway"]["data"]["gateway.yaml"])
    check(gw["discovery"] == {"kubernetes": {
        "namespaces": [NAMESPACE],
        "label_selector": f"sekisho.io/role=filter,app.kubernetes.io/instance={RELEASE}"}},
        f"kubernetes-discovery: gateway watches the release's filter pods: {gw['discovery']}")
    role = kinds(docs, "Role")[f"{RELEASE}-gateway"]
    check(role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
          "kubernetes-discovery: the Role reads pods only")
    binding = kinds(docs, "RoleBinding")[f"{RELEASE}-gateway"]
    check(binding["subjects"][0]["name"] == f"{RELEASE}-gateway", "kubernetes-discovery: bound to the gateway")
    for name, d in kinds(docs, "Deployment").items():
        pod = d["spec"]["template"]["spec"]
        is_gw = name == f"{RELEASE}-gateway"
        check(pod["automountServiceAccountToken"] is is_gw, f"kubernetes-discovery: {name} token only for the gateway")
        if is_gw:
            check(pod.get("serviceAccountName") == f"{RELEASE}-gateway", "kubernetes-discovery: gateway ServiceAccount")
        else:
            ann = d["spec"]["template"]["metadata"].get("annotations", {})
            labels = d["spec"]["template"]["metadata"]["labels"]
            if "sekisho.io/filter" in ann:
                check(labels.get("sekisho.io/role") == "filter", f"kubernetes-discovery: {name} matches the selector")
    print(f"kubernetes-discovery: {len(docs)} manifests")

    refused({"gateway": {"balance": "random"}}, "balance")
    refused({"filters": {"ng-image": {"gpu": {"memLimit": "lots"}}}}, "memLimit")
    refused({"filters": {"ocr": {"enabled": True}}}, "ocr")
    refused({"chainstore": {"replicas": 2}}, "SQLite serves one replica")
    refused({"chainstore": {"database": {"type": "postgres"}}}, "existingSecret")
    refused({"filters": {"qr-code": {"gpu": {"enabled": True}}}}, "only the ONNX filters")
    refused({"ui": {"tokens": [{"name": "x", "sha256": "abc", "role": "service"}]}}, "sha256")

    if failures:
        print(f"\n{len(failures)} chart check(s) failed")
        return 1
    print("chart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
