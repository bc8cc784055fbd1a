"""What import-linter cannot see (`make lint` runs its contracts from pyproject.toml).

Services, queries and models take plain values: they never read Flask's request, session
or `g`. And imports sit at the top of their module, where a reader looks for what a
module depends on, except in the composition roots (the app factory and the CLI, which
import late on purpose) or where a comment says why.
"""

import ast
from pathlib import Path

PORTAL = Path(__file__).resolve().parent.parent / "portal"
REQUEST_GLOBALS = {"request", "session", "g"}
LATE_IMPORTS_ALLOWED = {PORTAL / "__init__.py", PORTAL / "cli.py"}


SERVICE_SIDE = {"services.py", "queries.py", "models.py", "eligibility.py", "alerts.py"}
# Billing has one module per life cycle instead of a services.py.
BILLING_SERVICES = {"checkout.py", "fulfilment.py", "reconcile.py", "auto_recharge.py"}


def _is_service_side(path: Path) -> bool:
    if path.parent.name == "money_back":
        return True
    if path.parent.name == "billing" and path.name in BILLING_SERVICES:
        return True
    return path.name in SERVICE_SIDE or path.name in {"audit.py", "db.py", "datarights.py"}


def test_services_queries_and_models_never_read_the_request():
    offenders = []
    for path in sorted(PORTAL.rglob("*.py")):
        if not _is_service_side(path):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "flask":
                used = REQUEST_GLOBALS & {alias.name for alias in node.names}
                if used:
                    offenders.append(f"{path.relative_to(PORTAL)}:{node.lineno} {sorted(used)}")
    assert offenders == []


def test_imports_inside_functions_say_why():
    offenders = []
    for path in sorted(PORTAL.rglob("*.py")):
        if path in LATE_IMPORTS_ALLOWED:
            continue
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    before = lines[node.lineno - 2].strip() if node.lineno > 1 else ""
                    if not before.startswith("#") and "#" not in lines[node.lineno - 1]:
                        offenders.append(f"{path.relative_to(PORTAL)}:{node.lineno}")
    assert offenders == []
