#!/usr/bin/env python3
"""Offline checks of yrelay's deploy files that no off-the-shelf linter does.

Called by deploy/validate (which installs the tools and runs the linters); run from the
repository root. Each subcommand prints one line per finding to stderr and exits 1 if there
was any, so that deploy/validate can report every finding and still fail.

The list of metric names the server exposes is not here: deploy/validate owns it and passes
it in the environment variable YRELAY_KNOWN_METRICS ("name type" per line).
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from pathlib import Path

import yaml

FINDINGS: list[str] = []


def finding(where: str, message: str) -> None:
    FINDINGS.append(f"{where}: {message}")


def done() -> int:
    for f in FINDINGS:
        print(f"  FINDING {f}", file=sys.stderr)
    return 1 if FINDINGS else 0


# ------------------------------------------------------------------------------------------
# PromQL: which metric names a query reads.

# Series that are not yrelay's but may appear in queries (Prometheus' own scrape health).
FOREIGN_METRICS = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2", "start", "end",
}


def known_metrics() -> dict[str, str]:
    raw = os.environ.get("YRELAY_KNOWN_METRICS", "")
    metrics = {}
    for line in raw.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, kind = line.split()
        metrics[name] = kind
    if not metrics:
        sys.exit("checks.py: YRELAY_KNOWN_METRICS is empty (deploy/validate sets it)")
    return metrics


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not functions, keywords,
    label names (inside {...} or by/on (...)), durations, numbers or strings."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", expr)  # strings
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range and subquery durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        word = m.group(0)
        if word.lower() in PROMQL_KEYWORDS:
            continue
        rest = s[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function
        before = s[: m.start()]
        if re.search(r"[0-9.]$", before):
            continue  # part of a number such as 1e3
        names.add(word)
    return names


def check_metric_names(where: str, expr: str, metrics: dict[str, str]) -> set[str]:
    names = promql_metric_names(expr)
    used = set()
    if not names:
        finding(where, f"query selects no metric: {expr}")
    for name in names:
        if name in FOREIGN_METRICS:
            continue
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in metrics:
                base = name[: -len(suffix)]
                break
        if base not in metrics:
            finding(where, f"unknown metric {name!r} (not in deploy/validate's KNOWN_METRICS)")
            continue
        kind = metrics[base]
        if base != name and kind != "histogram":
            finding(where, f"{name!r}: {base} is a {kind}, not a histogram")
        if base == name and kind == "histogram":
            finding(where, f"{name!r} is a histogram: select {name}_bucket, _sum or _count")
        used.add(base)
    return used


def grafana_expr_for_promtool(expr: str) -> str:
    """Grafana's template variables replaced by values PromQL parses."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}", "5m", expr)
    expr = re.sub(r"\$\{?instance\}?", ".*", expr)
    if "$" in expr:
        finding("grafana", f"unhandled template variable in {expr}")
    return expr


# ------------------------------------------------------------------------------------------
# Subcommands


def cmd_dashboard(path: str, rules_out: str) -> int:
    """Dashboard JSON: structure, datasource, metric names; writes its queries as recording
    rules to rules_out so promtool can parse every one."""
    metrics = known_metrics()
    dash = json.loads(Path(path).read_text())
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in dash:
            finding(path, f"missing top-level {key!r}")
    variables = {v.get("name") for v in dash.get("templating", {}).get("list", [])}
    if not {"datasource", "instance"} <= variables:
        finding(path, f"template variables 'datasource' and 'instance' expected, found {sorted(variables)}")
    ids = set()
    rules = []
    used = set()
    panels = list(dash.get("panels", []))
    for p in list(panels):
        panels.extend(p.get("panels", []))  # panels inside collapsed rows
    for p in panels:
        pid = p.get("id")
        where = f"{path} panel {pid} {p.get('title')!r}"
        if pid in ids:
            finding(where, "duplicate panel id")
        ids.add(pid)
        gp = p.get("gridPos", {})
        if not all(k in gp for k in ("h", "w", "x", "y")) or gp.get("x", 0) + gp.get("w", 0) > 24:
            finding(where, f"bad gridPos {gp}")
        if p.get("type") == "row":
            continue
        if not p.get("title"):
            finding(where, "panel without title")
        targets = p.get("targets") or []
        if not targets:
            finding(where, "panel without queries")
        for t in targets:
            ds = t.get("datasource") or p.get("datasource") or {}
            if ds.get("uid") != "${datasource}":
                finding(where, f"query datasource should be the ${{datasource}} variable, is {ds}")
            expr = t.get("expr", "")
            used |= check_metric_names(f"{where} query {t.get('refId')}", expr, metrics)
            rules.append({"record": f"dashboard:panel{pid}_{t.get('refId')}",
                          "expr": grafana_expr_for_promtool(expr)})
    Path(rules_out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    print(f"  {len(rules)} dashboard queries, {len(used)} metrics used")
    return done()


def cmd_rules(*paths: str) -> int:
    """Prometheus rule files (or PrometheusRule groups extracted from them): metric names."""
    metrics = known_metrics()
    for path in paths:
        doc = yaml.safe_load(Path(path).read_text())
        for g in doc.get("groups", []):
            for r in g.get("rules", []):
                name = r.get("alert") or r.get("record")
                check_metric_names(f"{path} {name}", str(r.get("expr", "")), metrics)
                if r.get("alert"):
                    if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                        finding(f"{path} {name}", "alert needs labels.severity critical|warning|info")
                    if not r.get("annotations", {}).get("summary"):
                        finding(f"{path} {name}", "alert needs annotations.summary")
    return done()


def cmd_adapter(path: str, rules_out: str) -> int:
    """prometheus-adapter values: metric names of its rules; the templated metricsQuery
    written out as recording rules for promtool."""
    metrics = known_metrics()
    doc = yaml.safe_load(Path(path).read_text())
    custom = (doc.get("rules") or {}).get("custom") or []
    if not custom:
        finding(path, "no rules.custom entry")
    rules = []
    for i, rule in enumerate(custom):
        where = f"{path} rules.custom[{i}]"
        check_metric_names(where + " seriesQuery", rule.get("seriesQuery", ""), metrics)
        series = promql_metric_names(rule.get("seriesQuery", ""))
        q = rule.get("metricsQuery", "")
        q = (q.replace("<<.Series>>", next(iter(series), "missing"))
              .replace("<<.LabelMatchers>>", 'namespace="yrelay",pod=~"yrelay-.*"')
              .replace("<<.GroupBy>>", "pod"))
        if "<<" in q:
            finding(where, f"unknown template in metricsQuery: {q}")
        rules.append({"record": f"adapter:rule{i}", "expr": q})
        overrides = (rule.get("resources") or {}).get("overrides") or {}
        if set(overrides) != {"namespace", "pod"}:
            finding(where, "resources.overrides must map the namespace and pod labels (Pods metric)")
        as_name = (rule.get("name") or {}).get("as")
        if as_name:
            hpa = yaml.safe_load(Path("deploy/k8s/base/hpa.yaml").read_text())
            names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
            if as_name not in names:
                finding(where, f"serves {as_name!r} but the HPA reads {names}")
    Path(rules_out).write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": rules}]}))
    return done()


def cmd_kustomization(directory: str) -> int:
    """Every YAML file in a kustomize directory is listed in its kustomization (or is the
    kustomization), and every listed file exists."""
    d = Path(directory)
    k = yaml.safe_load((d / "kustomization.yaml").read_text())
    listed = set()
    for r in k.get("resources", []):
        if not (d / r).exists():
            finding(str(d / "kustomization.yaml"), f"resource {r!r} does not exist")
        listed.add(r)
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for f in gen.get("files", []):
            listed.add(f.split("=", 1)[-1])
    if k.get("secretGenerator"):
        finding(str(d), "secretGenerator: secrets must not live in the repository")
    for f in sorted(d.iterdir()):
        if f.is_file() and f.name != "kustomization.yaml" and f.suffix in (".yaml", ".yml", ".toml") and f.name not in listed:
            finding(str(f), "not listed in kustomization.yaml (so never applied or validated)")
    return done()


# Kinds the Prometheus Operator defines; kubernetes-validate has no schema for them.
CRD_KINDS = {"ServiceMonitor": "servicemonitor", "PrometheusRule": "prometheusrule"}


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def cmd_k8s(rendered: str, outdir: str, alerts: str, single_node: str) -> int:
    """A kustomize build: split core resources from CRDs for their validators, cross-check
    references between objects, and enforce the deployment's safety rules."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    docs = [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]
    core, by_kind = [], {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
        if d["kind"] in CRD_KINDS:
            name = f"{CRD_KINDS[d['kind']]}-{d['metadata']['name']}.yaml"
            (out / name).write_text(yaml.safe_dump(d, sort_keys=False))
        elif d["apiVersion"].split("/")[0].endswith(".coreos.com"):
            finding(rendered, f"{d['kind']}: a CRD kind deploy/validate has no schema for")
        else:
            core.append(d)
    (out / "core.yaml").write_text(yaml.safe_dump_all(core, sort_keys=False))
    where = rendered

    if by_kind.get("Secret"):
        finding(where, "a Secret is rendered: secrets are created by hand, never kept in the repository")

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    sts_list = by_kind.get("StatefulSet", [])
    if len(sts_list) != 1:
        finding(where, f"expected one StatefulSet, found {len(sts_list)}")
        return done()
    sts = sts_list[0]
    pod = sts["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    if not labels_match(sts["spec"]["selector"]["matchLabels"], pod_labels):
        finding(where, "StatefulSet selector does not match its pod labels")
    headless = services.get(sts["spec"]["serviceName"])
    if not headless or headless["spec"].get("clusterIP") != "None":
        finding(where, f"StatefulSet serviceName {sts['spec']['serviceName']!r} is not a headless Service")

    spec = pod["spec"]
    psc = spec.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and psc.get("runAsUser") == 10001
            and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
        finding(where, "pod securityContext: runAsNonRoot, runAsUser 10001, seccomp RuntimeDefault expected")
    if spec.get("terminationGracePeriodSeconds", 30) < 30:
        finding(where, "terminationGracePeriodSeconds below 30 s: not enough to flush rooms")
    config_names = {c["metadata"]["name"] for c in by_kind.get("ConfigMap", [])}
    pvc_names = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for v in volumes.values():
        if "configMap" in v and v["configMap"]["name"] not in config_names:
            finding(where, f"volume {v['name']} refers to missing ConfigMap {v['configMap']['name']}")
    for c in spec["containers"]:
        cw = f"{where} container {c['name']}"
        csc = c.get("securityContext", {})
        if not (csc.get("readOnlyRootFilesystem") and csc.get("allowPrivilegeEscalation") is False
                and csc.get("capabilities", {}).get("drop") == ["ALL"]):
            finding(cw, "securityContext: readOnlyRootFilesystem, no privilege escalation, drop ALL expected")
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})):
                finding(cw, f"resources.{kind} needs cpu and memory")
        port_names = {p["name"] for p in c.get("ports", [])}
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c.get(probe, {}).get("httpGet", {})
            if get.get("path") != path:
                finding(cw, f"{probe} should GET {path}")
            if get.get("port") not in port_names:
                finding(cw, f"{probe} port {get.get('port')!r} is not a container port")
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes and m["name"] not in pvc_names:
                finding(cw, f"volumeMount {m['name']} has no volume")
        for e in c.get("env", []):
            if "value" in e and re.search(r"SECRET|KEY|PASSWORD|TOKEN", e["name"]):
                finding(cw, f"env {e['name']} has a literal value: use secretKeyRef")
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref.get("name") != "yrelay-secrets":
                finding(cw, f"env {e['name']} reads Secret {ref.get('name')!r}, documented is yrelay-secrets")
        # Every Service that selects the pod exposes only container ports that exist.
        for s in services.values():
            if labels_match(s["spec"].get("selector"), pod_labels):
                for p in s["spec"]["ports"]:
                    if isinstance(p.get("targetPort"), str) and p["targetPort"] not in port_names:
                        finding(where, f"Service {s['metadata']['name']} targets missing port {p['targetPort']}")

    for ing in by_kind.get("Ingress", []):
        ann = ing["metadata"].get("annotations", {})
        for key in ("nginx.ingress.kubernetes.io/proxy-read-timeout", "nginx.ingress.kubernetes.io/proxy-send-timeout"):
            if int(ann.get(key, "0")) < 3600:
                finding(where, f"Ingress {key} should be at least 3600 for WebSockets")
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                svc = p["backend"]["service"]
                target = services.get(svc["name"])
                if not target or svc["port"].get("name") not in {x["name"] for x in target["spec"]["ports"]}:
                    finding(where, f"Ingress backend {svc} is not a Service port")

    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels):
            finding(where, "PodDisruptionBudget selects no yrelay pod")
        if "minAvailable" in pdb["spec"] and single_node == "1":
            finding(where, "PodDisruptionBudget minAvailable with one replica blocks every node drain")

    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    if len(hpas) != 1:
        finding(where, f"expected one HorizontalPodAutoscaler, found {len(hpas)}")
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] != "StatefulSet" or ref["name"] != sts["metadata"]["name"]:
            finding(where, f"HPA targets {ref}, not the StatefulSet")
        types = {m["type"] for m in hpa["spec"]["metrics"]}
        if types != {"Resource", "Pods"}:
            finding(where, f"HPA should scale on CPU (Resource) and connections (Pods), has {types}")
    if single_node == "1":
        # Single-node sled: a second replica would split rooms between unconnected stores.
        if sts["spec"].get("replicas", 1) != 1:
            finding(where, "single-node mode: StatefulSet replicas must be 1 (see deploy/k8s/cluster/README.md)")
        for hpa in hpas:
            if hpa["spec"]["maxReplicas"] != 1:
                finding(where, "single-node mode: HPA maxReplicas must be 1 until cluster mode")

    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"].get("matchLabels", {})
        matched = [s for s in services.values() if labels_match(sel, s["metadata"].get("labels", {}))]
        if len(matched) != 1:
            finding(where, f"ServiceMonitor selects {len(matched)} Services (want exactly 1: each pod scraped once)")
        for s in matched:
            names = {p["name"] for p in s["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep.get("port") not in names:
                    finding(where, f"ServiceMonitor port {ep.get('port')!r} not on Service {s['metadata']['name']}")

    reference = yaml.safe_load(Path(alerts).read_text())
    for pr in by_kind.get("PrometheusRule", []):
        groups = pr["spec"]["groups"]
        (out / f"prometheusrule-{pr['metadata']['name']}.rules.yml").write_text(
            yaml.safe_dump({"groups": groups}, sort_keys=False))
        if groups != reference["groups"]:
            finding(where, f"PrometheusRule {pr['metadata']['name']} groups differ from {alerts}")
    if not by_kind.get("PrometheusRule"):
        finding(where, "no PrometheusRule")
    print(f"  {len(core)} core resources, {sum(len(by_kind.get(k, [])) for k in CRD_KINDS)} custom resources")
    return done()


def cmd_compose(path: str) -> int:
    """docker-compose.yml: no secret is written in it, and every file it mounts exists."""
    doc = yaml.safe_load(Path(path).read_text())
    for name, svc in doc.get("services", {}).items():
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
        for key, value in env.items():
            if re.search(r"SECRET|KEY|PASSWORD|TOKEN", key):
                if not (isinstance(value, str) and re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", value)):
                    finding(f"{path} {name}", f"{key} must be ${{VAR:?message}} from the environment, is {value!r}")
        build = svc.get("build")
        if isinstance(build, dict):
            dockerfile = Path(build.get("context", ".")) / build.get("dockerfile", "Dockerfile")
            if not dockerfile.exists():
                finding(f"{path} {name}", f"Dockerfile {dockerfile} does not exist")
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")) and not Path(source).exists():
                finding(f"{path} {name}", f"bind mount source {source} does not exist")
        image = svc.get("image", "")
        if image and "build" not in svc and (":" not in image or image.endswith(":latest")):
            finding(f"{path} {name}", f"image {image!r} should be pinned to a version tag")
    return done()


def cmd_toml(path: str, reference: str) -> int:
    """A yrelay config file sets only keys the reference file (every key) has: yrelay refuses
    unknown keys at start."""
    def keys(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"
    ref = set(keys(tomllib.loads(Path(reference).read_text())))
    for k in keys(tomllib.loads(Path(path).read_text())):
        if k not in ref:
            finding(path, f"key {k!r} is not in {reference}")
    return done()


def cmd_metrics_doc(doc: str, *files: str) -> int:
    """Every yrelay metric the deploy files use is documented in docs/metrics.md."""
    metrics = known_metrics()
    text = Path(doc).read_text()
    used = set()
    for f in files:
        used |= {m for m in re.findall(r"yrelay_[a-z0-9_]+", Path(f).read_text())}
    for m in sorted(used):
        base = m
        for suffix in HISTOGRAM_SUFFIXES:
            if m.endswith(suffix) and m[: -len(suffix)] in metrics:
                base = m[: -len(suffix)]
        if base in metrics and base not in text:
            finding(doc, f"{base} is used by the deploy files but not documented")
    return done()


def dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over slash paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"
                i += 1
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def cmd_dockerignore(dockerfile: str, ignore_file: str, files_list: str) -> int:
    """Every file the image build reads reaches the build context: the sources of the
    Dockerfile's COPY lines (build stage) exist, and no file under them (from files_list, one
    repository path a line) is excluded by .dockerignore. A missing bench or test file would
    break `cargo build`, whose manifests declare them."""
    rules = []
    for line in Path(ignore_file).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        rules.append((negate, dockerignore_regex(pattern)))

    def ignored(path: str) -> bool:
        parts = path.split("/")
        result = False
        for negate, rx in rules:
            if any(rx.match("/".join(parts[: n + 1])) for n in range(len(parts))):
                result = not negate
        return result

    sources = []
    for line in Path(dockerfile).read_text().splitlines():
        m = re.match(r"\s*COPY\s+(?!--from)(.*)", line)
        if m:
            args = [a for a in m.group(1).split() if not a.startswith("--")]
            sources += args[:-1]
    if not sources:
        finding(dockerfile, "no COPY from the build context found")
    files = [f for f in Path(files_list).read_text().splitlines() if f]
    for src in sources:
        src = src.rstrip("/")
        if not Path(src).exists():
            finding(dockerfile, f"COPY source {src} does not exist")
        if ignored(src):
            finding(ignore_file, f"excludes {src}, which the Dockerfile copies")
        for f in files:
            if (f == src or f.startswith(src + "/")) and ignored(f) and "/node_modules/" not in f:
                finding(ignore_file, f"excludes {f}, part of {src} that the build reads")
    for must in (".git", ".env", "target"):
        if not ignored(must):
            finding(ignore_file, f"should exclude {must}")
    return done()


COMMANDS = {
    "dashboard": cmd_dashboard,
    "rules": cmd_rules,
    "adapter": cmd_adapter,
    "kustomization": cmd_kustomization,
    "k8s": cmd_k8s,
    "compose": cmd_compose,
    "toml": cmd_toml,
    "metrics-doc": cmd_metrics_doc,
    "dockerignore": cmd_dockerignore,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: checks.py {{{','.join(COMMANDS)}}} ARGS...")
    sys.exit(COMMANDS[sys.argv[1]](*sys.argv[2:]))
