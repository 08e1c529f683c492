"""Audit the serving dependencies for known vulnerabilities with pip-audit.

The audited set is emotion-server's run-time dependency closure as installed here (what
`pip install .` brings in), pinned to the installed versions, so dev and training
tools do not count. IDs listed in scripts/ops/audit-ignore.txt (one a line, `#` comments, each
explained in docs/operations.md) are ignored.

Exit codes: 0 no known vulnerability; 1 vulnerabilities found; 3 the audit could not be done
(pip-audit missing, or its vulnerability service unreachable).

Where pip-audit's per-version look-up is not reachable but PyPI's project pages are (as on some
mirrors), packages installed at their latest release are still checked against the
vulnerabilities PyPI lists for that release, and the others are reported as not audited.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.request
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
IGNORE_FILE = ROOT / "scripts" / "ops" / "audit-ignore.txt"
CANNOT_AUDIT = 3


def serving_packages() -> dict[str, str]:
    """{name: installed version} of emotion-server's run-time dependency closure."""
    seen: dict[str, str] = {}
    todo = ["emotion-server"]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    seen.pop("emotion-server", None)
    return dict(sorted(seen.items()))


def ignored_ids() -> list[str]:
    if not IGNORE_FILE.is_file():
        return []
    lines = (line.split("#", 1)[0].strip() for line in IGNORE_FILE.read_text().splitlines())
    return [line.split()[0] for line in lines if line]


def run_pip_audit(packages: dict[str, str], ignores: list[str]) -> dict | None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("".join(f"{name}=={version}\n" for name, version in packages.items()))
    command = [sys.executable, "-m", "pip_audit", "--no-deps", "--disable-pip"]
    command += ["--progress-spinner", "off", "--format", "json", "-r", handle.name]
    for vuln in ignores:
        command += ["--ignore-vuln", vuln]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        return None
    finally:
        Path(handle.name).unlink(missing_ok=True)
    if "No module named pip_audit" in result.stderr:
        print("pip-audit is not installed (pip install pip-audit; it is in the [dev] extra)")
        return None
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        print(result.stdout + result.stderr)
        return None


def latest_release_vulns(name: str, version: str) -> list[dict] | None:
    """PyPI's vulnerabilities of `name`'s latest release if `version` is it, else None."""
    url = f"https://pypi.org/pypi/{name}/json"
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            project = json.load(response)
    except (OSError, ValueError):
        return None
    if project.get("info", {}).get("version") != version:
        return None
    return project.get("vulnerabilities", [])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    packages = serving_packages()
    ignores = ignored_ids()
    print(f"auditing {len(packages)} serving packages:")
    print("  " + " ".join(f"{name}=={version}" for name, version in packages.items()))
    report = run_pip_audit(packages, ignores)
    if report is None:
        return CANNOT_AUDIT
    found: list[tuple[str, str, dict]] = []
    unaudited: list[str] = []
    for dependency in report.get("dependencies", []):
        name, version = dependency["name"], dependency.get("version", "?")
        if "skip_reason" in dependency:
            unaudited.append(name)
            continue
        found += [(name, version, vuln) for vuln in dependency.get("vulns", [])]
    service = "pip-audit (PyPI per-version data)"
    if unaudited and len(unaudited) == len(packages):
        # The per-version look-up is unreachable: fall back to PyPI's project pages.
        service = "PyPI project pages (latest releases only)"
        unaudited = []
        for name, version in packages.items():
            vulns = latest_release_vulns(name, version)
            if vulns is None:
                unaudited.append(name)
                continue
            found += [
                (name, version, vuln)
                for vuln in vulns
                if vuln.get("id") not in ignores and not set(vuln.get("aliases", [])) & set(ignores)
            ]
    audited = len(packages) - len(unaudited)
    print(f"source: {service}; audited {audited} of {len(packages)}")
    if unaudited:
        print("not audited (no vulnerability data reachable for the installed version):")
        print("  " + " ".join(f"{name}=={packages[name]}" for name in unaudited))
    for name, version, vuln in found:
        fixes = ", ".join(vuln.get("fix_versions") or vuln.get("fixed_in") or []) or "none"
        print(f"VULNERABLE {name}=={version}: {vuln.get('id')} (fixed in: {fixes})")
        print(f"  {(vuln.get('description') or vuln.get('summary') or '').strip()[:300]}")
    if found:
        return 1
    if audited == 0:
        print("the audit could not be done: no vulnerability service reachable")
        return CANNOT_AUDIT
    print("no known vulnerabilities in the audited packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
