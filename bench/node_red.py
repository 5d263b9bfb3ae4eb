"""The Node-RED comparison target for bench/run.py: the tool people would otherwise wire this with.

The flow is ``http in (POST /callbacks/revicom) -> http response`` and, from the same node,
``-> http request (POST to the bench receiver, keep-alive)``: it answers 200 before forwarding,
keeps nothing on disk and never retries. Node-RED checks no credentials here (its
``httpNodeAuth`` compares a bcrypt hash on every request, which would measure bcrypt, not the
flow); the load generator still sends the Basic header.

Node-RED is installed from the npm registry into ``bench/.node-red`` (git-ignored) on first use;
when ``node``/``npm`` are missing or the install fails, the target is skipped with a message.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent / ".node-red"
RED = HERE / "node_modules" / "node-red" / "red.js"


def ensure_installed(timeout: float = 600.0) -> str | None:
    """None when Node-RED can run, else the reason it cannot (install attempted once)."""
    if RED.exists() and shutil.which("node"):
        return None
    if not shutil.which("node") or not shutil.which("npm"):
        return "node and npm are not installed"
    HERE.mkdir(exist_ok=True)
    print("  installing node-red from the npm registry into bench/.node-red ...", flush=True)
    try:
        out = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(HERE), "node-red"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return f"npm install node-red took longer than {timeout:.0f}s"
    if out.returncode != 0 or not RED.exists():
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return f"npm install node-red failed: {tail[0]}"
    return None


def version() -> str:
    pkg = RED.parent / "package.json"
    return json.loads(pkg.read_text()).get("version", "?") if pkg.exists() else "?"


def prepare(workdir: Path, port: int, path: str, receiver_url: str) -> list[str]:
    """Write the settings and flow into `workdir`; return the command that runs Node-RED."""
    workdir.mkdir(parents=True, exist_ok=True)
    flow = [
        {"id": "bench_tab", "type": "tab", "label": "bench"},
        {
            "id": "bench_in",
            "type": "http in",
            "z": "bench_tab",
            "name": "",
            "url": path,
            "method": "post",
            "upload": False,
            "swaggerDoc": "",
            "wires": [["bench_response", "bench_forward"]],
        },
        {
            "id": "bench_response",
            "type": "http response",
            "z": "bench_tab",
            "name": "",
            "statusCode": "200",
            "headers": {},
            "wires": [],
        },
        {
            "id": "bench_forward",
            "type": "http request",
            "z": "bench_tab",
            "name": "",
            "method": "POST",
            "ret": "txt",
            "paytoqs": "ignore",
            "url": receiver_url,
            "tls": "",
            "persist": True,
            "proxy": "",
            "insecureHTTPParser": False,
            "authType": "",
            "senderr": False,
            "headers": [],
            "wires": [[]],
        },
    ]
    (workdir / "flows.json").write_text(json.dumps(flow))
    (workdir / "settings.js").write_text(
        "module.exports = {\n"
        f"  uiHost: '127.0.0.1', uiPort: {port}, flowFile: 'flows.json',\n"
        f"  userDir: {json.dumps(str(workdir))},\n"
        "  logging: { console: { level: 'warn', metrics: false, audit: false } },\n"
        "  editorTheme: { tours: false }, diagnostics: { enabled: false },\n"
        "  externalModules: { autoInstall: false },\n"
        "  telemetry: { enabled: false },\n"
        "};\n"
    )
    return ["node", str(RED), "--settings", str(workdir / "settings.js"), "--userDir", str(workdir)]
