"""A local stand-in for the Hugging Face Hub's upload API, for tests: the real huggingface_hub
client talks to it over HTTP (HF_ENDPOINT / HfApi's endpoint), no network needed.

It answers the calls an `upload_folder` into a new repository makes and records them:
  POST /api/repos/create                          -> {"url": ...}
  POST /api/validate-yaml                         the README's metadata: a YAML mapping, else 400
  POST /api/models/<repo>/preupload/<revision>    -> every file "regular" (so its bytes ride in the commit)
  POST /api/models/<repo>/commit/<revision>       ndjson: a header, then one line per file (base64)
Anything else is a 404, so a client that starts asking for more shows up as a failure.
With `tokens` set, a request whose bearer token is not one of them gets the Hub's 401.
"""
from __future__ import annotations

import base64
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


@dataclass
class HubStub:
    url: str = ""
    created: list[dict] = field(default_factory=list)  # create-repo bodies
    authorizations: list[str] = field(default_factory=list)  # Authorization header of every request
    commits: list[dict] = field(default_factory=list)  # {"repo", "summary", "files": {path: bytes}}
    validated: list[str] = field(default_factory=list)  # README texts sent to validate-yaml
    tokens: set[str] = field(default_factory=set)  # accepted tokens; empty = any

    def uploaded(self, repo_id: str) -> dict[str, bytes]:
        """path -> bytes of every file committed to `repo_id`."""
        files: dict[str, bytes] = {}
        for commit in self.commits:
            if commit["repo"] == repo_id:
                files.update(commit["files"])
        return files


def _handler(stub: HubStub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            authorization = self.headers.get("Authorization", "")
            stub.authorizations.append(authorization)
            if stub.tokens and authorization.removeprefix("Bearer ") not in stub.tokens:
                return self._answer(401, {"error": "Invalid credentials in Authorization header"})
            path = self.path.split("?")[0]
            if path == "/api/repos/create":
                request = json.loads(body)
                stub.created.append(request)
                name = f"{request.get('organization') or 'user'}/{request['name']}" if "/" not in request["name"] \
                    else request["name"]
                return self._answer(200, {"url": f"{stub.url}/{name}", "name": name, "id": name})
            if path == "/api/validate-yaml":
                content = json.loads(body)["content"]
                stub.validated.append(content)
                header = re.match(r"---\n(.*?)\n---\n", content, flags=re.S)
                metadata = yaml.safe_load(header.group(1)) if header else None
                if not isinstance(metadata, dict):
                    return self._answer(400, {"errors": [{"message": "README.md has no YAML metadata mapping"}]})
                return self._answer(200, {"errors": [], "warnings": []})
            preupload = re.fullmatch(r"/api/models/(.+)/preupload/([^/]+)", path)
            if preupload:
                files = json.loads(body)["files"]
                return self._answer(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                    for f in files]})
            commit = re.fullmatch(r"/api/models/(.+)/commit/([^/]+)", path)
            if commit:
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                files = {line["value"]["path"]: base64.b64decode(line["value"]["content"])
                         for line in lines if line["key"] == "file"}
                stub.commits.append({"repo": commit.group(1), "summary": header["summary"], "files": files})
                oid = f"{len(stub.commits):040x}"
                return self._answer(200, {"success": True, "commitOid": oid,
                                          "commitUrl": f"{stub.url}/{commit.group(1)}/commit/{oid}"})
            return self._answer(404, {"error": f"the stub does not serve {path}"})

    return Handler


def start_hub_stub() -> tuple[HubStub, ThreadingHTTPServer]:
    """Serve a HubStub on a free local port in a daemon thread; stop it with server.shutdown()."""
    stub = HubStub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return stub, server
