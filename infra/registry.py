"""A small schema registry speaking the Confluent Schema Registry REST API.

Enough of the API for confluent-kafka's ``SchemaRegistryClient``, ``AvroSerializer`` and
``AvroDeserializer``: register, look up (by id, by subject and schema), subject versions,
soft and permanent deletes, global and per-subject compatibility config, and the
compatibility test endpoints. Compatibility is decided by the ``avro`` package's
``ReaderWriterCompatibilityChecker``; nothing here invents Avro evolution rules.

State is one JSON file, written atomically (temp file, fsync, rename) after every change, so
ids and versions survive a restart. It listens on 127.0.0.1 unless told otherwise. Production
points ``SCHEMA_REGISTRY_URL`` at a real Confluent / Karapace / Apicurio / Redpanda registry.

    python -m infra.registry --host 127.0.0.1 --port 18081 --data-dir .tickflow/registry
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import avro.errors
import avro.schema

from connectors.durable import make_dirs, write_bytes
from infra.procs import ManagedProcess, python_module_argv
from schemas.compat import reader_problems

log = logging.getLogger("tickflow.registry")

LEVELS = ("NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL",
          "FULL_TRANSITIVE")
DEFAULT_LEVEL = "BACKWARD"
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(Exception):
    """An API error: HTTP status, Confluent error code, message."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _no_subject(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


# -- Avro ---------------------------------------------------------------------------------

# JSON types a field default may have, per Avro type (the spec's default-value table).
_DEFAULT_TYPES: dict[str, tuple[type, ...]] = {
    "null": (type(None),), "boolean": (bool,), "int": (int,), "long": (int,),
    "float": (int, float), "double": (int, float), "bytes": (str,), "string": (str,),
    "fixed": (str,), "enum": (str,), "array": (list,), "map": (dict,), "record": (dict,),
}


def _check_defaults(schema: avro.schema.Schema, seen: set[int]) -> None:
    """Refuse a field default of the wrong JSON type. ``avro.schema.parse`` accepts
    ``{"type": "int", "default": "x"}``; Confluent refuses it, and a reader would fail on it
    only much later, when it first needs the default."""
    if id(schema) in seen:
        return
    seen.add(id(schema))
    if isinstance(schema, avro.schema.RecordSchema):
        for f in schema.fields:
            if f.has_default:
                # A union's default belongs to its first branch.
                t = f.type.schemas[0] if isinstance(f.type, avro.schema.UnionSchema) else f.type
                ok = _DEFAULT_TYPES.get(t.type, (object,))
                if not isinstance(f.default, ok) or (isinstance(f.default, bool)
                                                     and bool not in ok):
                    raise RegistryError(422, 42201, f"Invalid schema: default {f.default!r} "
                                        f"of field '{f.name}' is not a valid {t.type}")
            _check_defaults(f.type, seen)
    elif isinstance(schema, avro.schema.ArraySchema):
        _check_defaults(schema.items, seen)
    elif isinstance(schema, avro.schema.MapSchema):
        _check_defaults(schema.values, seen)
    elif isinstance(schema, avro.schema.UnionSchema):
        for s in schema.schemas:
            _check_defaults(s, seen)


def parse_schema(schema_str: str) -> avro.schema.Schema:
    """Parse and validate an Avro schema, or raise the 422 Confluent answers."""
    try:
        parsed = avro.schema.parse(schema_str)
    except (avro.errors.AvroException, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise RegistryError(422, 42201, f"Invalid schema: {exc}") from None
    _check_defaults(parsed, set())
    return parsed


def canonical(parsed: avro.schema.Schema) -> str:
    """The identity of a schema: whitespace, key order and namespace spelling do not matter."""
    return json.dumps(parsed.to_json(), sort_keys=True, separators=(",", ":"))


# -- state --------------------------------------------------------------------------------

@dataclass
class Version:
    version: int
    schema_id: int
    deleted: bool = False


@dataclass
class State:
    """Everything the registry knows; the JSON file is exactly this. A soft-deleted subject is
    one whose versions are all soft-deleted."""

    next_id: int = 1
    schemas: dict[int, str] = field(default_factory=dict)  # id -> schema string as registered
    canon: dict[str, int] = field(default_factory=dict)  # canonical form -> id (derived)
    subjects: dict[str, list[Version]] = field(default_factory=dict)
    global_level: str = DEFAULT_LEVEL
    subject_level: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"next_id": self.next_id, "schemas": {str(k): v for k, v in self.schemas.items()},
                "subjects": {s: [[v.version, v.schema_id, v.deleted] for v in vs]
                             for s, vs in self.subjects.items()},
                "global_level": self.global_level, "subject_level": self.subject_level}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> State:
        st = cls(next_id=d["next_id"], global_level=d["global_level"],
                 subject_level=d["subject_level"])
        st.schemas = {int(k): v for k, v in d["schemas"].items()}
        st.canon = {canonical(avro.schema.parse(v)): k for k, v in st.schemas.items()}
        st.subjects = {s: [Version(*v) for v in vs] for s, vs in d["subjects"].items()}
        for s, gone in d.get("subject_deleted", {}).items():  # older files kept a flag
            for v in st.subjects.get(s, []) if gone else []:
                v.deleted = True
        return st


class Registry:
    """The registry's logic, independent of HTTP. Every public method holds one lock: the
    registry is tiny and a global order keeps id and version allocation race-free."""

    def __init__(self, data_dir: Path) -> None:
        make_dirs(data_dir)
        self.path = data_dir / "registry.json"
        self.lock = threading.RLock()
        self.st = (State.from_json(json.loads(self.path.read_text())) if self.path.exists()
                   else State())

    def _save(self) -> None:
        write_bytes(self.path, json.dumps(self.st.to_json()).encode(),
                    self.path.with_suffix(".tmp"))

    def _versions(self, subject: str, deleted: bool = False) -> list[Version]:
        vs = [v for v in self.st.subjects.get(subject, []) if deleted or not v.deleted]
        if not vs:
            raise _no_subject(subject)
        return vs

    def _version(self, subject: str, version: str, deleted: bool = False) -> Version:
        vs = self._versions(subject, deleted)
        if version in ("latest", "-1"):
            return vs[-1]
        if not version.isdigit() or not 1 <= int(version) < 2**31:
            raise RegistryError(422, 42202, f"The specified version '{version}' is not a valid "
                                "version id. Allowed values are between [1, 2^31-1] and 'latest'")
        for v in vs:
            if v.version == int(version):
                return v
        raise RegistryError(404, 40402, f"Version {version} not found.")

    def _body(self, subject: str, v: Version) -> dict[str, Any]:
        return {"subject": subject, "version": v.version, "id": v.schema_id,
                "schema": self.st.schemas[v.schema_id]}

    def _problems(self, new: avro.schema.Schema, against: list[Version], level: str
                  ) -> list[str]:
        out: list[str] = []
        for v in against:
            old = avro.schema.parse(self.st.schemas[v.schema_id])
            if level.startswith(("BACKWARD", "FULL")):  # the new schema reads old data
                out += [f"BACKWARD vs version {v.version}: {p}" for p in reader_problems(new, old)]
            if level.startswith(("FORWARD", "FULL")):  # old readers read new data
                out += [f"FORWARD vs version {v.version}: {p}" for p in reader_problems(old, new)]
        return out

    def _targets(self, subject: str, level: str) -> list[Version]:
        """The versions a new schema is judged against under ``level``."""
        live = [v for v in self.st.subjects.get(subject, []) if not v.deleted]
        return [] if level == "NONE" else live if level.endswith("TRANSITIVE") else live[-1:]

    # -- reads ------------------------------------------------------------------------------
    def subjects(self, deleted: bool, deleted_only: bool, prefix: str) -> list[str]:
        with self.lock:
            out = []
            for s, vs in self.st.subjects.items():
                live = any(not v.deleted for v in vs)
                if s.startswith(prefix) and (not live if deleted_only else live or deleted):
                    out.append(s)
            return sorted(out)

    def versions(self, subject: str, deleted: bool, deleted_only: bool) -> list[int]:
        with self.lock:
            if deleted_only:
                if subject not in self.st.subjects:
                    raise _no_subject(subject)
                return [v.version for v in self.st.subjects[subject] if v.deleted]
            return [v.version for v in self._versions(subject, deleted)]

    def get_version(self, subject: str, version: str, deleted: bool) -> dict[str, Any]:
        with self.lock:
            return self._body(subject, self._version(subject, version, deleted))

    def schema(self, schema_id: int) -> str:
        with self.lock:
            if schema_id not in self.st.schemas:
                raise RegistryError(404, 40403, f"Schema {schema_id} not found")
            return self.st.schemas[schema_id]

    def uses(self, schema_id: int, deleted: bool, subject: str | None) -> list[dict[str, Any]]:
        """The subject-versions that hold ``schema_id``."""
        with self.lock:
            self.schema(schema_id)
            return [{"subject": s, "version": v.version} for s, vs in self.st.subjects.items()
                    for v in vs if v.schema_id == schema_id and (deleted or not v.deleted)
                    and subject in (None, s)]

    def lookup(self, subject: str, schema_str: str, deleted: bool) -> dict[str, Any]:
        key = canonical(parse_schema(schema_str))
        with self.lock:
            sid = self.st.canon.get(key)
            for v in reversed(self._versions(subject, deleted)):
                if v.schema_id == sid:
                    return self._body(subject, v)
        raise RegistryError(404, 40403, f"Schema not found under subject '{subject}'")

    def level(self, subject: str | None = None) -> str:
        with self.lock:
            if subject is None:
                return self.st.global_level
            return self.st.subject_level.get(subject, self.st.global_level)

    def subject_level(self, subject: str, default_to_global: bool) -> str:
        with self.lock:
            lvl = self.st.subject_level.get(subject)
            if lvl is None and not default_to_global:
                raise RegistryError(404, 40408, f"Subject '{subject}' does not have "
                                    "subject-level compatibility configured")
            return lvl or self.st.global_level

    def test(self, subject: str, schema_str: str, version: str | None) -> list[str]:
        """Why ``schema_str`` may not join ``subject``: against one version (``version``,
        direction from the level, no transitivity) or, with None, as registration would."""
        new = parse_schema(schema_str)
        with self.lock:
            level = self.level(subject)
            if version is None:
                return self._problems(new, self._targets(subject, level), level)
            target = self._version(subject, version)
            return [] if level == "NONE" else self._problems(new, [target], level)

    # -- writes -----------------------------------------------------------------------------
    def register(self, subject: str, schema_str: str, normalize: bool) -> dict[str, Any]:
        parsed = parse_schema(schema_str)
        key = canonical(parsed)
        with self.lock:
            sid = self.st.canon.get(key)
            vs = self.st.subjects.get(subject, [])
            for v in vs:
                if not v.deleted and v.schema_id == sid:  # idempotent: same schema, same answer
                    return {"id": v.schema_id, "version": v.version}
            level = self.level(subject)
            problems = self._problems(parsed, self._targets(subject, level), level)
            if problems:
                raise RegistryError(409, 409, (
                    f"Schema being registered is incompatible with an earlier schema for subject "
                    f"'{subject}' (compatibility {level}): " + "; ".join(problems)))
            if sid is None:  # ids are global: identical schemas share one across subjects
                sid = self.st.next_id
                self.st.next_id += 1
                self.st.schemas[sid] = key if normalize else schema_str
                self.st.canon[key] = sid
            # Numbers are never reused, even after a soft delete of the whole subject.
            number = max((v.version for v in vs), default=0) + 1
            self.st.subjects.setdefault(subject, []).append(Version(number, sid))
            self._save()
            return {"id": sid, "version": number}

    def delete_subject(self, subject: str, permanent: bool) -> list[int]:
        with self.lock:
            vs = self.st.subjects.get(subject)
            if not vs:
                raise _no_subject(subject)
            live = [v.version for v in vs if not v.deleted]
            if permanent:
                if live:
                    raise RegistryError(404, 40405, f"Subject '{subject}' was not deleted first "
                                        "before being permanently deleted")
                del self.st.subjects[subject]
                self.st.subject_level.pop(subject, None)
                out = [v.version for v in vs]
            else:
                if not live:
                    raise RegistryError(404, 40404, f"Subject '{subject}' was soft deleted. "
                                        "Set permanent=true to delete permanently")
                for v in vs:
                    v.deleted = True
                out = live
            self._save()
            return out

    def delete_version(self, subject: str, version: str, permanent: bool) -> int:
        with self.lock:
            v = self._version(subject, version, deleted=True)
            if permanent and not v.deleted:
                raise RegistryError(404, 40407, f"Subject '{subject}' Version {v.version} was "
                                    "not deleted first before being permanently deleted")
            if not permanent and v.deleted:
                raise RegistryError(404, 40406, f"Subject '{subject}' Version {v.version} was "
                                    "soft deleted. Set permanent=true to delete permanently")
            if permanent:
                self.st.subjects[subject].remove(v)
                if not self.st.subjects[subject]:
                    del self.st.subjects[subject]
            else:
                v.deleted = True
            self._save()
            return v.version

    def set_level(self, subject: str | None, body: Any) -> str:
        b = body if isinstance(body, dict) else {}
        level = str(b.get("compatibility") or b.get("compatibilityLevel") or "").upper()
        if level not in LEVELS:
            raise RegistryError(422, 42203, f"Invalid compatibility level {level or None!r}; "
                                f"expected one of {', '.join(LEVELS)}")
        with self.lock:
            if subject is None:
                self.st.global_level = level
            else:
                self.st.subject_level[subject] = level
            self._save()
            return level

    def delete_level(self, subject: str | None) -> str:
        """Drop a subject's level (or reset the global one); returns the level it had."""
        with self.lock:
            if subject is None:
                old, self.st.global_level = self.st.global_level, DEFAULT_LEVEL
            elif subject in self.st.subject_level:
                old = self.st.subject_level.pop(subject)
            else:
                raise RegistryError(404, 40408, f"Subject '{subject}' does not have "
                                    "subject-level compatibility configured")
            self._save()
            return old


# -- HTTP ---------------------------------------------------------------------------------

Query = dict[str, str]
Handler = Callable[[Registry, dict[str, str], Query, Any], Any]


def _flag(q: Query, name: str) -> bool:
    # The client sends both "true" (httpx params) and "True" (hand-formatted query strings).
    return q.get(name, "").lower() == "true"


def _schema_of(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise RegistryError(422, 42201, "Request body must be an object with a 'schema' string")
    if (body.get("schemaType") or "AVRO").upper() != "AVRO":
        raise RegistryError(422, 42201, f"Unsupported schemaType {body['schemaType']!r}: "
                            "this registry serves AVRO only")
    if body.get("references"):
        raise RegistryError(422, 42201, "Schema references are not supported by this registry")
    return str(body["schema"])


def _config(level: str) -> dict[str, str]:
    return {"compatibilityLevel": level, "compatibility": level}


def _compat(problems: list[str], q: Query) -> dict[str, Any]:
    out: dict[str, Any] = {"is_compatible": not problems}
    if _flag(q, "verbose"):
        out["messages"] = problems
    return out


def _compat_all(r: Registry, p: dict[str, str], q: Query, b: Any) -> Any:
    return _compat(r.test(p["s"], _schema_of(b), None), q)


def _compat_one(r: Registry, p: dict[str, str], q: Query, b: Any) -> Any:
    return _compat(r.test(p["s"], _schema_of(b), p["v"]), q)


_S, _V, _ID = r"(?P<s>[^/]+)", r"(?P<v>[^/]+)", r"(?P<id>\d+)"
ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "", lambda r, p, q, b: {}),
    ("GET", "/subjects", lambda r, p, q, b: r.subjects(
        _flag(q, "deleted"), _flag(q, "deleted_only"), q.get("subjectPrefix", ""))),
    ("GET", "/schemas/types", lambda r, p, q, b: ["AVRO"]),
    ("GET", f"/schemas/ids/{_ID}", lambda r, p, q, b: {"schema": r.schema(int(p["id"]))}),
    ("GET", f"/schemas/ids/{_ID}/schema", lambda r, p, q, b: json.loads(r.schema(int(p["id"])))),
    ("GET", f"/schemas/ids/{_ID}/versions", lambda r, p, q, b: r.uses(
        int(p["id"]), _flag(q, "deleted"), q.get("subject"))),
    ("GET", f"/schemas/ids/{_ID}/subjects", lambda r, p, q, b: sorted({u["subject"] for u in r.uses(
        int(p["id"]), _flag(q, "deleted"), q.get("subject"))})),
    ("POST", f"/subjects/{_S}", lambda r, p, q, b: r.lookup(
        p["s"], _schema_of(b), _flag(q, "deleted"))),
    ("DELETE", f"/subjects/{_S}", lambda r, p, q, b: r.delete_subject(
        p["s"], _flag(q, "permanent"))),
    ("GET", f"/subjects/{_S}/versions", lambda r, p, q, b: r.versions(
        p["s"], _flag(q, "deleted"), _flag(q, "deleted_only"))),
    ("POST", f"/subjects/{_S}/versions", lambda r, p, q, b: r.register(
        p["s"], _schema_of(b), _flag(q, "normalize"))),
    ("GET", f"/subjects/{_S}/versions/{_V}", lambda r, p, q, b: r.get_version(
        p["s"], p["v"], _flag(q, "deleted"))),
    ("DELETE", f"/subjects/{_S}/versions/{_V}", lambda r, p, q, b: r.delete_version(
        p["s"], p["v"], _flag(q, "permanent"))),
    ("GET", f"/subjects/{_S}/versions/{_V}/schema", lambda r, p, q, b: json.loads(
        r.get_version(p["s"], p["v"], _flag(q, "deleted"))["schema"])),
    ("GET", "/config", lambda r, p, q, b: _config(r.level())),
    ("PUT", "/config", lambda r, p, q, b: {"compatibility": r.set_level(None, b)}),
    ("DELETE", "/config", lambda r, p, q, b: _config(r.delete_level(None))),
    ("GET", f"/config/{_S}", lambda r, p, q, b: _config(r.subject_level(
        p["s"], _flag(q, "defaultToGlobal")))),
    ("PUT", f"/config/{_S}", lambda r, p, q, b: {"compatibility": r.set_level(p["s"], b)}),
    ("DELETE", f"/config/{_S}", lambda r, p, q, b: _config(r.delete_level(p["s"]))),
    ("POST", f"/compatibility/subjects/{_S}/versions", _compat_all),
    ("POST", f"/compatibility/subjects/{_S}/versions/{_V}", _compat_one),
]
_COMPILED = [(m, re.compile(f"^{p}$"), h) for m, p, h in ROUTES]


def route(reg: Registry, method: str, target: str, body: Any) -> Any:
    """Answer one request (``target`` is the raw path and query) or raise RegistryError."""
    url = urlsplit(target)
    path = url.path.rstrip("/")
    query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    allowed = False
    for m, pattern, handler in _COMPILED:
        match = pattern.match(path)  # match before unquoting: a subject may hold "%2F"
        if match:
            allowed = True
            if m == method:
                params = {k: unquote(v) for k, v in match.groupdict().items()}
                return handler(reg, params, query, body)
    if allowed:
        raise RegistryError(405, 405, f"Method {method} not allowed on {path}")
    raise RegistryError(404, 404, f"No such endpoint: {method} {path}")


AUTH_ENV = "SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO"


def _expected_authorization(user_info: str | None) -> str | None:
    """The ``Authorization`` header every request must carry, or None for an open registry.
    ``user_info`` is ``user:password`` as Confluent clients take it."""
    if not user_info:
        return None
    return "Basic " + base64.b64encode(user_info.encode()).decode()


def make_handler(reg: Registry, verbose: bool,
                 authorization: str | None = None) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client reuses one connection
        # Headers and body leave in two writes; with Nagle on, the body waits for the client's
        # delayed ACK of the headers, ~40 ms per request on loopback.
        disable_nagle_algorithm = True

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

        def _dispatch(self) -> None:
            try:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if authorization is not None and not hmac.compare_digest(
                        self.headers.get("Authorization", ""), authorization):
                    raise RegistryError(401, 40101, "Unauthorized")
                try:
                    body = json.loads(raw) if raw.strip() else None
                except json.JSONDecodeError as exc:
                    raise RegistryError(400, 50005, f"Request body is not JSON: {exc}") from None
                self._send(200, route(reg, self.command, self.path, body))
            except RegistryError as exc:
                self._send(exc.status, {"error_code": exc.code, "message": exc.message})
            except Exception as exc:  # a bug must answer 500, not drop the connection
                log.exception("registry error on %s %s", self.command, self.path)
                self._send(500, {"error_code": 50001, "message": f"Internal error: {exc}"})

        do_GET = do_POST = do_PUT = do_DELETE = _dispatch

    return RequestHandler


def registry_process(host: str, port: int, data_dir: Path, log_path: Path) -> ManagedProcess:
    """The registry as a child process (``python -m infra.registry``): the embedded stack,
    tests and benchmarks all start it this way. Use it as a context manager."""
    return ManagedProcess("registry", python_module_argv(
        "infra.registry", "--host", host, "--port", str(port), "--data-dir", str(data_dir)),
        host, port, log_path)


class RegistryServer:
    """The registry over HTTP: ``start()`` serves from a background thread, ``stop()`` ends it;
    ``serve_forever()`` serves in the caller's thread. Port 0 picks a free port (see ``url``)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 data_dir: Path = Path(".tickflow/registry"), verbose: bool = False,
                 basic_auth_user_info: str | None = None) -> None:
        self.registry = Registry(Path(data_dir))
        self.httpd = ThreadingHTTPServer((host, port), make_handler(
            self.registry, verbose, _expected_authorization(basic_auth_user_info)))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever(poll_interval=0.05)  # stop() waits up to one interval
        finally:
            self.httpd.server_close()

    def start(self) -> RegistryServer:
        self._thread = threading.Thread(target=self.serve_forever, name="registry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        if self._thread is not None:
            self._thread.join()
        self.httpd.server_close()

    def __enter__(self) -> RegistryServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m infra.registry",
        description="tickflow's embedded schema registry (Confluent REST API subset, Avro). "
                    f"With {AUTH_ENV}=user:password in the environment, every request needs "
                    "that HTTP basic auth.")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    ap.add_argument("--port", type=int, default=18081, help="TCP port (0: any free port)")
    ap.add_argument("--data-dir", type=Path, default=Path(".tickflow/registry"),
                    help="where registry.json is kept")
    ap.add_argument("--verbose", action="store_true", help="log every request on stderr")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    # Credentials only from the environment, never from argv (visible to every local user).
    server = RegistryServer(args.host, args.port, args.data_dir, args.verbose,
                            os.environ.get(AUTH_ENV))

    def stop(*_: object) -> None:
        # shutdown() blocks until serve_forever returns, and the handler runs inside
        # serve_forever's thread: ask from another thread or it would wait for itself.
        threading.Thread(target=server.httpd.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"schema registry on {server.url}, data in {args.data_dir}", file=sys.stderr,
          flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
