"""The Argo CD health checks and their test cases (gitops/argocd/, in Argo CD's own layout), and a
Lua 5.1 run of a check as Argo CD runs one from argocd-cm."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
ARGOCD = ROOT / "gitops" / "argocd" / "kubetune.io"
KINDS = ("FineTuneJob", "PreferenceAlignment")
# Argo CD's verdict ⇒ kstatus' (and a Flux health check's) on the same object
KSTATUS_OF = {"Healthy": "Current", "Degraded": "Failed", "Progressing": "InProgress", "Suspended": "InProgress"}
HEALTH_CODES = {"Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing"}
# What gopher-lua's OpenBase, OpenTable and OpenPackage give a script from argocd-cm (useOpenLibs
# off); Argo CD's safe `os` is left out: these checks do not read the clock.
BASE_LIBRARY = ("assert", "collectgarbage", "error", "getfenv", "getmetatable", "ipairs", "load", "loadstring",
                "module", "next", "pairs", "pcall", "print", "rawequal", "rawget", "rawset", "require", "select",
                "setfenv", "setmetatable", "tonumber", "tostring", "type", "unpack", "xpcall", "_VERSION", "table")


@dataclass(frozen=True)
class Case:
    kind: str
    input_path: str
    expected: dict[str, str]  # Argo CD's HealthStatus: status, message

    @property
    def obj(self) -> dict[str, Any]:
        return yaml.safe_load((ARGOCD / self.kind / self.input_path).read_text())  # type: ignore[no-any-return]

    def __str__(self) -> str:
        return f"{self.kind}/{self.input_path}"


def cases() -> list[Case]:
    """Every test in every health_test.yaml, as Argo CD's TestLuaHealthScript collects them."""
    out = []
    for kind in KINDS:
        doc = yaml.safe_load((ARGOCD / kind / "health_test.yaml").read_text())
        for test in doc["tests"]:
            hs = test["healthStatus"]
            out.append(Case(kind, test["inputPath"], {"status": hs["status"], "message": hs.get("message", "")}))
    return out


def script(kind: str) -> str:
    return (ARGOCD / kind / "health.lua").read_text()


def run_health_lua(source: str, obj: dict[str, Any]) -> dict[str, str]:
    """Argo CD's ExecuteHealthLua: `obj` as a global, the script's returned table read back through
    JSON as a HealthStatus {status, message}; an unknown status code reads as Unknown."""
    import lupa.lua51 as lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.execute('debug.setmetatable("", nil)')  # no string methods either: ("x"):find is string.find
    sandbox = lua.eval("function(names) local env = {} for _, n in ipairs(names) do env[n] = _G[n] end "
                       "env._G = env return env end")(lua.table_from(list(BASE_LIBRARY)))
    sandbox.obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    chunk = lua.eval("function(source, env) local f = assert(loadstring(source, 'health.lua')) "
                     "setfenv(f, env) return f() end")
    table = chunk(source, sandbox)
    result = {"status": str(table["status"] or ""), "message": str(table["message"] or "")}
    if result["status"] not in HEALTH_CODES:
        return {"status": "Unknown", "message": "Lua returned an invalid health status"}
    return result
