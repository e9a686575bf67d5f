"""A small schema registry speaking the Confluent Schema Registry REST API.

Enough of the API for confluent-kafka's ``SchemaRegistryClient``, ``AvroSerializer`` and
``AvroDeserializer``: register, look up (by id, by subject and schema), subject versions
(latest and by number), soft and permanent deletes, global and per-subject compatibility
config, and the compatibility test endpoint. Compatibility is decided by the ``avro``
package's ``ReaderWriterCompatibilityChecker``; nothing here invents Avro rules.

State is one JSON file, written atomically (temp file, fsync, rename) after every change, so
ids and versions survive a restart. It listens on 127.0.0.1 unless told otherwise. Production
points ``SCHEMA_REGISTRY_URL`` at a real Confluent / Karapace / Apicurio / Redpanda registry.

    python -m infra.registry --port 18081 --data-dir .tickflow/registry
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import avro.errors
import avro.schema

from schemas.check import reader_writer_problems

log = logging.getLogger("tickflow.registry")

LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
          "FULL_TRANSITIVE")
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(Exception):
    """An API error: HTTP status, Confluent error code, message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _not_found_subject(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def _parse(schema_str: str) -> avro.schema.Schema:
    try:
        return avro.schema.parse(schema_str)
    except (avro.errors.SchemaParseException, json.JSONDecodeError, TypeError,
            ValueError) as exc:
        raise RegistryError(422, 42201, f"Invalid schema: {exc}") from None


def _canonical(parsed: avro.schema.Schema) -> str:
    return json.dumps(parsed.to_json(), sort_keys=True, separators=(",", ":"))


@dataclass
class Version:
    version: int
    schema_id: int
    deleted: bool = False


@dataclass
class State:
    """Everything the registry knows; the JSON file is exactly this."""

    next_id: int = 1
    schemas: dict[int, str] = field(default_factory=dict)  # id -> schema string
    canon: dict[str, int] = field(default_factory=dict)  # canonical form -> id
    subjects: dict[str, list[Version]] = field(default_factory=dict)
    subject_deleted: dict[str, bool] = field(default_factory=dict)
    global_level: str = "BACKWARD"
    subject_level: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "next_id": self.next_id,
            "schemas": {str(k): v for k, v in self.schemas.items()},
            "subjects": {s: [[v.version, v.schema_id, v.deleted] for v in vs]
                         for s, vs in self.subjects.items()},
            "subject_deleted": self.subject_deleted,
            "global_level": self.global_level,
            "subject_level": self.subject_level,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> State:
        st = cls(next_id=d["next_id"], global_level=d["global_level"],
                 subject_level=d["subject_level"], subject_deleted=d["subject_deleted"])
        st.schemas = {int(k): v for k, v in d["schemas"].items()}
        st.canon = {_canonical(_parse(v)): k for k, v in st.schemas.items()}
        st.subjects = {s: [Version(*v) for v in vs] for s, vs in d["subjects"].items()}
        return st


class Registry:
    """The registry's logic, independent of HTTP. Thread-safe."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "registry.json"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.st = State.from_json(json.loads(self.path.read_text())) if self.path.exists() \
            else State()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(self.st.to_json(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # -- reads ---------------------------------------------------------------------------
    def _live(self, subject: str, include_deleted: bool = False) -> list[Version]:
        vs = self.st.subjects.get(subject)
        if vs is None or (self.st.subject_deleted.get(subject) and not include_deleted):
            raise _not_found_subject(subject)
        live = [v for v in vs if include_deleted or not v.deleted]
        if not live:
            raise _not_found_subject(subject)
        return live

    def _version(self, subject: str, version: str, include_deleted: bool = False) -> Version:
        live = self._live(subject, include_deleted)
        if version in ("latest", "-1"):
            return live[-1]
        try:
            n = int(version)
        except ValueError:
            raise RegistryError(422, 42202, f"Invalid version {version!r}") from None
        for v in live:
            if v.version == n:
                return v
        raise RegistryError(404, 40402, f"Version {version} not found.")

    def version_body(self, subject: str, v: Version) -> dict[str, Any]:
        return {"subject": subject, "version": v.version, "id": v.schema_id,
                "schemaType": "AVRO", "schema": self.st.schemas[v.schema_id]}

    def level(self, subject: str | None) -> str:
        if subject is not None and subject in self.st.subject_level:
            return self.st.subject_level[subject]
        return self.st.global_level

    def check(self, subject: str, new: avro.schema.Schema, against: list[Version] | None = None
              ) -> list[str]:
        """Why ``new`` may not join ``subject`` under its compatibility level."""
        level = self.level(subject)
        if level == "NONE":
            return []
        try:
            live = against if against is not None else self._live(subject)
        except RegistryError:
            return []
        targets = live if level.endswith("TRANSITIVE") else live[-1:]
        problems: list[str] = []
        for v in targets:
            old = _parse(self.st.schemas[v.schema_id])
            if level.startswith(("BACKWARD", "FULL")):
                problems += [f"BACKWARD vs version {v.version}: {p}"
                             for p in reader_writer_problems(new, old)]
            if level.startswith(("FORWARD", "FULL")):
                problems += [f"FORWARD vs version {v.version}: {p}"
                             for p in reader_writer_problems(old, new)]
        return problems

    # -- writes --------------------------------------------------------------------------
    def register(self, subject: str, schema_str: str) -> dict[str, Any]:
        parsed = _parse(schema_str)
        key = _canonical(parsed)
        with self.lock:
            vs = self.st.subjects.get(subject, [])
            if self.st.subject_deleted.get(subject):
                vs = []  # a soft-deleted subject starts again (its versions stay for ids)
            for v in vs:
                if not v.deleted and self.st.canon.get(key) == v.schema_id:
                    return {"id": v.schema_id, "version": v.version}
            problems = self.check(subject, parsed, [v for v in vs if not v.deleted] or None)
            if problems:
                raise RegistryError(409, 409, (
                    f"Schema being registered is incompatible with an earlier schema for "
                    f"subject '{subject}' (compatibility {self.level(subject)}): "
                    + "; ".join(problems)))
            sid = self.st.canon.get(key)
            if sid is None:
                sid = self.st.next_id
                self.st.next_id += 1
                self.st.schemas[sid] = schema_str
                self.st.canon[key] = sid
            all_vs = self.st.subjects.setdefault(subject, [])
            number = max((v.version for v in all_vs), default=0) + 1
            if self.st.subject_deleted.pop(subject, None):
                for v in all_vs:
                    v.deleted = True
            all_vs.append(Version(number, sid))
            self._save()
            return {"id": sid, "version": number}

    def lookup(self, subject: str, schema_str: str) -> dict[str, Any]:
        key = _canonical(_parse(schema_str))
        with self.lock:
            for v in self._live(subject):
                if self.st.canon.get(key) == v.schema_id:
                    return self.version_body(subject, v)
        raise RegistryError(404, 40403, "Schema not found.")

    def delete_subject(self, subject: str, permanent: bool) -> list[int]:
        with self.lock:
            vs = self.st.subjects.get(subject)
            if vs is None:
                raise _not_found_subject(subject)
            if permanent:
                if not self.st.subject_deleted.get(subject) and any(not v.deleted for v in vs):
                    raise RegistryError(409, 40405, f"Subject '{subject}' was not deleted first "
                                        "before being permanently deleted")
                del self.st.subjects[subject]
                self.st.subject_deleted.pop(subject, None)
                self.st.subject_level.pop(subject, None)
                out = [v.version for v in vs]
            else:
                if self.st.subject_deleted.get(subject):
                    raise RegistryError(404, 40404, f"Subject '{subject}' was soft deleted.")
                out = [v.version for v in vs if not v.deleted]
                self.st.subject_deleted[subject] = True
            self._save()
            return out

    def delete_version(self, subject: str, version: str, permanent: bool) -> int:
        with self.lock:
            v = self._version(subject, version, include_deleted=permanent)
            if permanent:
                if not v.deleted:
                    raise RegistryError(409, 40407, f"Version {v.version} of subject "
                                        f"'{subject}' was not deleted first")
                self.st.subjects[subject].remove(v)
            else:
                v.deleted = True
            self._save()
            return v.version

    def set_level(self, subject: str | None, body: dict[str, Any]) -> dict[str, Any]:
        level = body.get("compatibility") or body.get("compatibilityLevel")
        if level not in LEVELS:
            raise RegistryError(422, 42203, f"Invalid compatibility level {level!r}; "
                                f"expected one of {', '.join(LEVELS)}")
        with self.lock:
            if subject is None:
                self.st.global_level = level
            else:
                self.st.subject_level[subject] = level
            self._save()
        return {"compatibility": level, "compatibilityLevel": level}


Route = tuple[str, re.Pattern[str], str]
_S = r"(?P<subject>[^/]+)"
_V = r"(?P<version>[^/]+)"
ROUTES: list[Route] = [(m, re.compile(f"^{p}$"), h) for m, p, h in [
    ("GET", "/subjects", "list_subjects"),
    ("GET", "/schemas/types", "schema_types"),
    ("GET", r"/schemas/ids/(?P<id>\d+)", "schema_by_id"),
    ("GET", r"/schemas/ids/(?P<id>\d+)/schema", "raw_schema_by_id"),
    ("GET", r"/schemas/ids/(?P<id>\d+)/versions", "versions_by_id"),
    ("GET", r"/schemas/ids/(?P<id>\d+)/subjects", "subjects_by_id"),
    ("GET", f"/subjects/{_S}/versions", "list_versions"),
    ("POST", f"/subjects/{_S}/versions", "register"),
    ("POST", f"/subjects/{_S}", "lookup"),
    ("DELETE", f"/subjects/{_S}", "delete_subject"),
    ("GET", f"/subjects/{_S}/versions/{_V}", "get_version"),
    ("GET", f"/subjects/{_S}/versions/{_V}/schema", "get_version_schema"),
    ("DELETE", f"/subjects/{_S}/versions/{_V}", "delete_version"),
    ("GET", "/config", "get_global_config"),
    ("PUT", "/config", "put_global_config"),
    ("GET", f"/config/{_S}", "get_subject_config"),
    ("PUT", f"/config/{_S}", "put_subject_config"),
    ("DELETE", f"/config/{_S}", "delete_subject_config"),
    ("POST", f"/compatibility/subjects/{_S}/versions/{_V}", "compat_version"),
    ("POST", f"/compatibility/subjects/{_S}/versions", "compat_all"),
    ("GET", "/", "root"),
]]


class Api:
    """HTTP-shaped handlers: (path params, query, body) -> JSON-able response."""

    def __init__(self, reg: Registry) -> None:
        self.reg = reg

    def root(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return {}

    def list_subjects(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        deleted = q.get("deleted") == "true"
        st = self.reg.st
        return sorted(s for s, vs in st.subjects.items()
                      if deleted or (not st.subject_deleted.get(s) and any(not v.deleted
                                                                          for v in vs)))

    def schema_types(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return ["AVRO"]

    def _schema(self, p: dict[str, str]) -> str:
        s = self.reg.st.schemas.get(int(p["id"]))
        if s is None:
            raise RegistryError(404, 40403, f"Schema {p['id']} not found")
        return s

    def schema_by_id(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return {"schema": self._schema(p), "schemaType": "AVRO"}

    def raw_schema_by_id(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return json.loads(self._schema(p))

    def versions_by_id(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        self._schema(p)
        sid = int(p["id"])
        return [{"subject": s, "version": v.version} for s, vs in self.reg.st.subjects.items()
                for v in vs if v.schema_id == sid and not v.deleted]

    def subjects_by_id(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return sorted({x["subject"] for x in self.versions_by_id(p, q, b)})

    def list_versions(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return [v.version for v in self.reg._live(p["subject"], q.get("deleted") == "true")]

    def register(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        _avro_only(b)
        return self.reg.register(p["subject"], _schema_of(b))

    def lookup(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        _avro_only(b)
        return self.reg.lookup(p["subject"], _schema_of(b))

    def delete_subject(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return self.reg.delete_subject(p["subject"], q.get("permanent") == "true")

    def get_version(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        v = self.reg._version(p["subject"], p["version"], q.get("deleted") == "true")
        return self.reg.version_body(p["subject"], v)

    def get_version_schema(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return json.loads(self.get_version(p, q, b)["schema"])

    def delete_version(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return self.reg.delete_version(p["subject"], p["version"], q.get("permanent") == "true")

    def get_global_config(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        lvl = self.reg.st.global_level
        return {"compatibilityLevel": lvl, "compatibility": lvl}

    def put_global_config(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return self.reg.set_level(None, b or {})

    def get_subject_config(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        lvl = self.reg.st.subject_level.get(p["subject"])
        if lvl is None:
            if q.get("defaultToGlobal") != "true":
                raise RegistryError(404, 40408, f"Subject '{p['subject']}' does not have "
                                    "subject-level compatibility configured")
            lvl = self.reg.st.global_level
        return {"compatibilityLevel": lvl, "compatibility": lvl}

    def put_subject_config(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return self.reg.set_level(p["subject"], b or {})

    def delete_subject_config(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        with self.reg.lock:
            lvl = self.reg.st.subject_level.pop(p["subject"], None)
            if lvl is None:
                raise _not_found_subject(p["subject"])
            self.reg._save()
        return {"compatibilityLevel": lvl, "compatibility": lvl}

    def _compat(self, p: dict[str, str], q: dict[str, str], b: Any, versions: list[Version]
                ) -> Any:
        _avro_only(b)
        problems = self.reg.check(p["subject"], _parse(_schema_of(b)), versions)
        out: dict[str, Any] = {"is_compatible": not problems}
        if q.get("verbose") == "true":
            out["messages"] = problems
        return out

    def compat_version(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        v = self.reg._version(p["subject"], p["version"])
        # Against one named version the level's direction applies, without transitivity.
        return self._compat(p, q, b, [v])

    def compat_all(self, p: dict[str, str], q: dict[str, str], b: Any) -> Any:
        return self._compat(p, q, b, self.reg._live(p["subject"]))


def _schema_of(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise RegistryError(422, 42201, "Request body must be an object with a 'schema' string")
    return str(body["schema"])


def _avro_only(body: Any) -> None:
    if isinstance(body, dict) and body.get("schemaType", "AVRO") != "AVRO":
        raise RegistryError(422, 42201, f"Unsupported schemaType {body['schemaType']!r}: "
                            "this registry serves AVRO only")


def make_handler(api: Api, verbose: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            if verbose:
                log.info(format, *args)

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path.rstrip("/")) or "/"
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    raise RegistryError(400, 400, "Request body is not valid JSON") from None
                for m, pattern, name in ROUTES:
                    match = pattern.match(path)
                    if match and m == method:
                        self._send(200, getattr(api, name)(match.groupdict(), query, body))
                        return
                raise RegistryError(404, 404, f"No route for {method} {path}")
            except RegistryError as exc:
                self._send(exc.status, {"error_code": exc.code, "message": exc.message})
            except Exception as exc:  # a bug must answer 500, not kill the connection
                log.exception("registry error")
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR,
                           {"error_code": 50001, "message": f"internal error: {exc}"})

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

    return Handler


class RegistryServer:
    """The registry over HTTP, in a background thread (``start``/``stop``) or in the
    foreground (``serve_forever``)."""

    def __init__(self, host: str, port: int, data_dir: Path, verbose: bool = False) -> None:
        self.registry = Registry(data_dir)
        self.httpd = ThreadingHTTPServer((host, port), make_handler(Api(self.registry), verbose))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> RegistryServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="tickflow's embedded schema registry "
                                 "(Confluent REST API subset)")
    ap.add_argument("--host", default="127.0.0.1", help="Bind address (loopback by default)")
    ap.add_argument("--port", type=int, default=18081)
    ap.add_argument("--data-dir", type=Path, default=Path(".tickflow/registry"))
    ap.add_argument("--verbose", action="store_true", help="Log every request")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr)
    server = RegistryServer(args.host, args.port, args.data_dir, args.verbose)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.httpd.shutdown)
                  .start())
    print(f"schema registry on {server.url}, data in {args.data_dir}", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        server.httpd.serve_forever()
    server.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
