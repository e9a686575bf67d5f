"""docker-compose.yml and the Kubernetes manifests cannot run here; what they ask of tickflow
can be checked: every command resolves through the real CLI with options it accepts, and
every environment variable they set is one tickflow reads."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

# Typer carries its own copy of click (typer._click): the command objects and errors are
# click's, under that name.
from typer._click.core import Command, Context
from typer._click.exceptions import ClickException, UsageError

from app.cli import app
from tickflow.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "infra" / "k8s"
# Options `tickflow flow run` hands on to `python -m bytewax.run` (process id, addresses).
BYTEWAX_PASSTHROUGH = {"-i", "--process-id", "-a", "--addresses"}


def known_env() -> set[str]:
    """Settings aliases, and the variables the code reads with os.environ.get."""
    names = {f.alias for f in Settings.model_fields.values() if f.alias}
    pat = re.compile(r'os\.environ\.get\("([A-Z0-9_]+)"')
    for pkg in ("tickflow", "flows", "connectors", "infra"):
        for py in (ROOT / pkg).rglob("*.py"):
            names |= set(pat.findall(py.read_text()))
    return names


def check_cli(args: list[str]) -> None:
    """Resolve ``tickflow <args>`` to a command and parse its options and values the way a
    run would, without running it. Raises click's own error when something is wrong."""
    cmd: Command = typer.main.get_command(app)
    path = ["tickflow"]
    rest = list(args)
    while hasattr(cmd, "list_commands"):  # a group
        if not rest:
            raise UsageError(f"{' '.join(path)} needs a subcommand")
        name = rest.pop(0)
        sub = cmd.get_command(Context(cmd), name)
        if sub is None:
            raise UsageError(f"no command {name!r} under {' '.join(path)}")
        cmd, path = sub, [*path, name]
    ctx = cmd.make_context(" ".join(path), rest)  # parses and converts; does not invoke
    extra = [a for a in ctx.args if a.startswith("-")]
    unknown = [a for a in extra if a not in BYTEWAX_PASSTHROUGH]
    if unknown:
        raise UsageError(f"{' '.join(path)}: unknown options {unknown}")


def compose_services() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return {k: v for k, v in doc["services"].items() if v.get("build") == "."}


def k8s_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for f in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    return [c for c in pod.get("containers", []) if c.get("image", "").startswith("tickflow")]


def tickflow_args(c: dict[str, Any]) -> list[str]:
    """The arguments after ``tickflow``: the image's entrypoint, or an ``sh -c`` script that
    execs it (shell expansions stand in as a plain value)."""
    if c.get("command", [])[:2] == ["sh", "-c"]:
        script = re.sub(r"\$\{[^}]*\}", "0", c["args"][0])
        words = shlex.split(script)
        return words[words.index("tickflow") + 1:]
    return list(c.get("args") or c.get("command") or [])


def test_every_compose_service_runs_a_real_command() -> None:
    services = compose_services()
    assert {"provision", "register-schemas", "dataflow"} <= set(services)
    for name, svc in services.items():
        try:
            check_cli(list(svc["command"]))
        except ClickException as exc:
            pytest.fail(f"compose service {name}: {exc.format_message()}")


def test_every_k8s_container_runs_a_real_command() -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "Job", "ConfigMap", "Service"} <= kinds
    found = 0
    for d in docs:
        for c in containers(d):
            found += 1
            try:
                check_cli(tickflow_args(c))
            except ClickException as exc:
                pytest.fail(f"{d['kind']} {d['metadata']['name']}: {exc.format_message()}")
    assert found >= 4


def test_every_environment_variable_is_one_tickflow_reads() -> None:
    known = known_env()
    used: dict[str, set[str]] = {}
    for name, svc in compose_services().items():
        used[f"compose {name}"] = set(svc.get("environment") or {})
    for d in k8s_docs():
        where = f"{d['kind']} {d['metadata']['name']}"
        if d["kind"] == "ConfigMap":
            used[where] = set(d.get("data", {}))
        for c in containers(d):
            used[where] = used.get(where, set()) | {e["name"] for e in c.get("env", [])}
    for where, names in used.items():
        assert names <= known, f"{where}: {sorted(names - known)} are read by nothing"


def test_dataflow_addresses_match_the_replicas() -> None:
    [sts] = [d for d in k8s_docs() if d["kind"] == "StatefulSet"]
    script = sts["spec"]["template"]["spec"]["containers"][0]["args"][0]
    addrs = re.search(r'-a "([^"]+)"', script)
    assert addrs is not None
    name, svc = sts["metadata"]["name"], sts["spec"]["serviceName"]
    want = ";".join(f"{name}-{i}.{svc}:2101" for i in range(sts["spec"]["replicas"]))
    assert addrs.group(1) == want


def test_the_checker_refuses_what_a_run_would_refuse() -> None:
    for bad in (["flow", "runn"], ["flow", "run", "--recovery-dirr", "/x"],
                ["flow", "run", "-w", "two"], ["connect", "massive-ws", "--market"]):
        with pytest.raises(ClickException):
            check_cli(bad)
    check_cli(["flow", "run", "-w", "1", "-i", "0", "-a", "h:1;h:2"])


def test_connector_spools_are_on_persistent_volumes() -> None:
    # The spool holds frames received while the broker is away: on the container's own
    # filesystem a restart during an outage would lose them (cli: <state_dir>/spool/).
    checked = 0
    for name, svc in compose_services().items():
        if svc["command"][0] != "connect":
            continue
        spool = f"{svc['environment']['TICKFLOW_STATE_DIR']}/spool"
        named = set(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["volumes"])
        mounts = [v.split(":") for v in svc.get("volumes", [])]
        assert any(src in named and dst == spool for src, dst in mounts), name
        checked += 1
    config = next(d for d in k8s_docs() if d["kind"] == "ConfigMap")["data"]
    claims = {d["metadata"]["name"] for d in k8s_docs() if d["kind"] == "PersistentVolumeClaim"}
    for d in k8s_docs():
        for c in containers(d):
            if tickflow_args(c)[0] != "connect":
                continue
            pod = d["spec"]["template"]["spec"]
            pvcs = {v["name"] for v in pod.get("volumes", [])
                    if v.get("persistentVolumeClaim", {}).get("claimName") in claims}
            spool = f"{config['TICKFLOW_STATE_DIR']}/spool"
            assert any(m["name"] in pvcs and m["mountPath"] == spool
                       for m in c.get("volumeMounts", [])), d["metadata"]["name"]
            checked += 1
    assert checked >= 3
