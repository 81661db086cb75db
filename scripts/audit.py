"""`make audit`: pip-audit over the installed environment, with an honest verdict.

pip-audit looks every installed distribution up in a vulnerability service (PyPI's JSON API by default). Where
that service cannot be reached, each lookup is skipped ("not found on PyPI") and pip-audit still prints "No known
vulnerabilities found"; this wrapper counts what was really audited and fails when nothing was (exit 2), or when
anything audited has a known vulnerability (exit 1). Local builds (torch's +cpu) and editable installs are skipped.
"""

from __future__ import annotations

import json
import subprocess
import sys


def main() -> int:
    command = [sys.executable, "-m", "pip_audit", "--skip-editable", "--progress-spinner", "off", "-f", "json",
               *sys.argv[1:]]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        print(result.stderr or result.stdout, file=sys.stderr)
        return 2
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    vulnerable = [d for d in audited if d.get("vulns")]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fix yet"
            print(f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {fixed})")
    print(f"pip-audit: {len(audited)} of {len(dependencies)} installed distributions audited, "
          f"{len(vulnerable)} with known vulnerabilities")  # fmt: skip
    if not audited:
        print("pip-audit could not reach its vulnerability data (every lookup was skipped): nothing was audited",
              file=sys.stderr)  # fmt: skip
        return 2
    return 1 if vulnerable else 0


if __name__ == "__main__":
    raise SystemExit(main())
