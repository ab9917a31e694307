"""A local stand-in for the Hugging Face Hub API, enough for ``HfApi.create_repo``, ``create_branch``,
``create_commit`` / ``upload_folder`` (regular, base64 uploads), ``repo_info`` and, to read uploads back,
``list_repo_tree`` / ``hf_hub_download`` / ``snapshot_download`` of huggingface_hub 2.x.

It runs a threading ``http.server`` on 127.0.0.1 and records every request (method, path, headers,
JSON payload) and the state it builds: repositories with their visibility, branches and the files of each
commit. Endpoints (paths as ``huggingface_hub/hf_api.py`` and ``_commit_api.py`` build them):

    POST /api/repos/create                          {"name", "organization", "visibility", "type"}
    POST /api/validate-yaml                         {"content", "repoType"} (README front matter check)
    POST /api/models/{repo}/branch/{branch}         {"startingPoint"?}; 409 when the branch exists
    POST /api/models/{repo}/preupload/{revision}    {"files": [{"path", "sample", "size"}]} → uploadMode regular
    POST /api/models/{repo}/commit/{revision}       NDJSON: header, file (base64), lfsFile, deletedFile
    GET  /api/models/{repo}[/revision/{revision}]   repo info: ``sha`` (the revision's commit), ``siblings``
    GET  /api/models/{repo}/tree/{revision}[/{path}] files (and, recursive or not, folders) with size and oid
    GET|HEAD /{repo}/resolve/{revision}/{path}      a file's bytes; headers X-Repo-Commit, ETag (the git blob
                                                    sha1, quoted), Content-Length; 404 EntryNotFound
    GET  /api/agent-harnesses                       the client's user-agent registry (empty)

A revision is a branch name or the oid of any commit (each commit keeps a snapshot of its branch's files).
Every upload is answered ``regular`` by ``preupload``, so no LFS / Xet transfer is attempted, and downloads
carry no Xet headers, so the client fetches the bytes with a plain GET.
Anything else is answered 404 and recorded in ``unexpected``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import yaml


class FakeHub:
    def __init__(self, require_token: bool = True):
        self.require_token = require_token
        self.requests: list[dict] = []
        self.unexpected: list[str] = []
        self.repos: dict[str, dict] = {}  # repo_id -> {"visibility", "branches": {name: {path: bytes}}, "commits"}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    # --- helpers for tests ---------------------------------------------------------------------
    @property
    def authorizations(self) -> list[str]:
        return [r["headers"].get("authorization", "") for r in self.requests]

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["branches"][branch]

    def downloads(self, repo_id: str | None = None) -> list[str]:
        """Paths of the files served by ``GET .../resolve/...`` (of ``repo_id`` when given)."""
        out = []
        for r in self.requests:
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", r["path"])
            if m and r["method"] == "GET" and (repo_id is None or m.group(1) == repo_id):
                out.append(unquote(m.group(2)))
        return out

    @staticmethod
    def _snapshot(repo: dict, rev: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit oid, files) of a branch name or a commit oid; None when unknown."""
        if rev in repo["branches"]:
            return repo["heads"][rev], repo["branches"][rev]
        if rev in repo["snapshots"]:
            return rev, repo["snapshots"][rev]
        return None

    # --- the server ------------------------------------------------------------------------------
    def _handler(self):
        hub = self

        def blob_oid(data: bytes) -> str:  # git's blob id, as the Hub reports it for regular files
            return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, obj=None, headers: dict | None = None, body: bytes | None = None,
                      content_type: str = "application/json"):
                if body is None:
                    body = json.dumps(obj if obj is not None else {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, message: str, code: str | None = None):
                self._send(status, {"error": message}, {"X-Error-Message": message, **({"X-Error-Code": code} if code else {})})

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_HEAD(self):
                self._route("HEAD")

            def _route(self, method: str):
                path = urlsplit(self.path).path
                raw = self._body()
                rec = {"method": method, "path": path, "query": urlsplit(self.path).query,
                       "headers": {k.lower(): v for k, v in self.headers.items()}, "body": raw}
                with hub.lock:
                    hub.requests.append(rec)
                auth = rec["headers"].get("authorization", "")
                if hub.require_token and not auth.startswith("Bearer "):
                    return self._error(401, "Invalid credentials in Authorization header")
                try:
                    payload = json.loads(raw) if raw and "ndjson" not in rec["headers"].get("content-type", "") else None
                except ValueError:
                    payload = None
                rec["json"] = payload
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(branch|preupload|commit|revision)/(.+)", path)
                with hub.lock:
                    if method == "POST" and path == "/api/repos/create":
                        return self._create_repo(payload or {})
                    if method == "POST" and path == "/api/validate-yaml":
                        return self._validate_yaml(payload or {})
                    if m and method == "POST":
                        repo_id, op, rev = m.group(1), m.group(2), unquote(m.group(3))
                        if repo_id not in hub.repos:
                            return self._error(404, "Repository not found", "RepoNotFound")
                        return getattr(self, f"_{op}")(repo_id, rev, payload, raw)
                    if method == "GET" and path == "/api/agent-harnesses":  # the client's agent detection
                        return self._send(200, {"standardEnvVars": [], "harnesses": {}})
                    m2 = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
                    if m2 and method == "GET":
                        return self._info(m2.group(1), unquote(m2.group(2) or "main"))
                    m3 = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.+))?", path)
                    if m3 and method == "GET":
                        return self._tree(m3.group(1), unquote(m3.group(2)), unquote(m3.group(3) or ""),
                                          "recursive=true" in rec["query"].lower())
                    m4 = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                    if m4 and method in ("GET", "HEAD"):
                        return self._resolve(m4.group(1), unquote(m4.group(2)), unquote(m4.group(3)))
                hub.unexpected.append(f"{method} {path}")
                return self._error(404, f"fake hub: no route for {method} {path}")

            def _create_repo(self, p: dict):
                repo_id = f"{p['organization']}/{p['name']}" if p.get("organization") else p["name"]
                first = hashlib.sha1(f"init {repo_id}".encode()).hexdigest()  # the Hub's initial commit
                rec = {"visibility": p.get("visibility", "public"), "type": p.get("type", "model"),
                       "branches": {"main": {}}, "commits": [], "heads": {"main": first}, "snapshots": {first: {}}}
                if repo_id in hub.repos:  # the Hub's 409 carries the url too (create_repo(exist_ok=True) reads it)
                    msg = "You already created this model repo"
                    return self._send(409, {"error": msg, "url": f"{hub.url}/{repo_id}"}, {"X-Error-Message": msg})
                hub.repos[repo_id] = rec
                return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

            def _validate_yaml(self, p: dict):
                content = p.get("content", "")
                if content.startswith("---"):
                    try:
                        meta = yaml.safe_load(content.split("---", 2)[1])
                        assert isinstance(meta, dict)
                    except Exception as e:  # noqa: BLE001
                        return self._error(400, f"invalid YAML metadata: {e}")
                    return self._send(200, {"errors": [], "warnings": []})
                return self._send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})

            def _branch(self, repo_id, branch, payload, raw):
                branches = hub.repos[repo_id]["branches"]
                if branch in branches:
                    return self._error(409, "Reference already exists")
                start = (payload or {}).get("startingPoint") or "main"
                snap = hub._snapshot(hub.repos[repo_id], start)
                if snap is None:
                    return self._error(404, f"Invalid rev id: {start}", "RevisionNotFound")
                hub.repos[repo_id]["heads"][branch] = snap[0]
                branches[branch] = dict(snap[1])
                return self._send(200, {})

            def _preupload(self, repo_id, rev, payload, raw):
                files = (payload or {}).get("files", [])
                return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                                   "oid": None} for f in files], "commitOid": "0" * 40})

            def _commit(self, repo_id, rev, payload, raw):
                repo = hub.repos[repo_id]
                if rev not in repo["branches"]:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                lines = [json.loads(x) for x in raw.splitlines() if x.strip()]
                header = next((x["value"] for x in lines if x["key"] == "header"), {})
                files = repo["branches"][rev]
                added = []
                for x in lines:
                    v = x["value"]
                    if x["key"] == "file":
                        files[v["path"]] = base64.b64decode(v["content"]) if v.get("encoding") == "base64" \
                            else v["content"].encode()
                        added.append(v["path"])
                    elif x["key"] == "lfsFile":  # never asked for (preupload answers regular)
                        files[v["path"]] = b"<lfs " + v.get("oid", "").encode() + b">"
                        added.append(v["path"])
                    elif x["key"] in ("deletedFile", "deletedFolder"):
                        files.pop(v["path"], None)
                oid = hashlib.sha1(repo["heads"][rev].encode() + raw).hexdigest()
                repo["heads"][rev] = oid
                repo["snapshots"][oid] = dict(files)
                repo["commits"].append({"oid": oid, "branch": rev, "summary": header.get("summary"), "files": added})
                return self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                                        "pullRequestUrl": None, "success": True})

            def _revision(self, repo_id, rev, payload, raw):  # POST to /revision is not a real route
                return self._error(405, "method not allowed")

            def _info(self, repo_id, rev):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "Repository not found", "RepoNotFound")
                snap = hub._snapshot(repo, rev)
                if snap is None:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                sha, files = snap
                return self._send(200, {"id": repo_id, "modelId": repo_id, "sha": sha,
                                        "private": repo["visibility"] == "private",
                                        "siblings": [{"rfilename": f, "size": len(files[f])} for f in sorted(files)]})

            def _tree(self, repo_id, rev, folder, recursive):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "Repository not found", "RepoNotFound")
                snap = hub._snapshot(repo, rev)
                if snap is None:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                prefix = folder.strip("/") + "/" if folder.strip("/") else ""
                entries: dict[str, dict] = {}
                for path in sorted(snap[1]):
                    if not path.startswith(prefix):
                        continue
                    parts = path[len(prefix):].split("/")
                    for i in range(1, len(parts)):  # the folders on the way
                        d = prefix + "/".join(parts[:i])
                        entries.setdefault(d, {"type": "directory", "path": d, "size": 0,
                                               "oid": hashlib.sha1(d.encode()).hexdigest()})
                        if not recursive:
                            break
                    if recursive or len(parts) == 1:
                        data = snap[1][path]
                        entries[path] = {"type": "file", "path": path, "size": len(data), "oid": blob_oid(data)}
                if prefix and not entries:
                    return self._error(404, f"{folder} does not exist on {rev}", "EntryNotFound")
                return self._send(200, list(entries.values()))

            def _resolve(self, repo_id, rev, path):
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "Repository not found", "RepoNotFound")
                snap = hub._snapshot(repo, rev)
                if snap is None:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                sha, files = snap
                if path not in files:
                    self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound",
                                                                   "X-Error-Message": "Entry not found",
                                                                   "X-Repo-Commit": sha})
                    return None
                data = files[path]
                return self._send(200, body=data, content_type="application/octet-stream",
                                  headers={"X-Repo-Commit": sha, "ETag": f'"{blob_oid(data)}"', "Accept-Ranges": "none"})

        return Handler
