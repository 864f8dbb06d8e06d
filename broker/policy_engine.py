"""The client's one door to the broker's rules engine (``broker policy check|explain|push``,
``broker vault setup``'s served roles).

The engine is the server's own code (``chalicelib.policy``, the pure rules engine, and
``chalicelib.methods``, each proof method's facts and rule conditions),
so that the client explains decisions exactly as the broker makes them. ``broker.pyz``
carries a copy of those pure modules, made by its build from this repository's
(deploy/client/build.py, ``ENGINE``), with ``tomli`` for Pythons without ``tomllib``:
from the pyz the commands need nothing else. The wheel carries only ``broker``: from it,
or from a checkout, when ``chalicelib`` is not importable as it is, the checkout is found
from the current directory upwards and its ``chalicelib`` package is loaded from there by
file location (no ``sys.path`` editing, nothing purged from ``sys.modules``).

Re-point the engine here, and only here.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from broker.errors import RulesInvalidError, UsageError

PACKAGE = "chalicelib"
RULES_MODULE = "chalicelib.policy"
FACTS_MODULE = "chalicelib.methods"
ERRORS_MODULE = "chalicelib.errors"
MARKER = os.path.join("chalicelib", "policy", "__init__.py")  # how a checkout is recognised
DEFAULT_RULES = ("chalicelib/policies/rules.toml", "policies/rules.toml")


@dataclass(frozen=True)
class Engine:
    rules: Any   # load_rules(path) -> ruleset with .rules and .explain(facts, role); warnings(); RulesError
    facts: Any   # facts_from_dict(raw): the facts of the method the record names
    fact_errors: Tuple[type, ...]

    def load_rules(self, path: str) -> Any:
        try:
            return self.rules.load_rules(path)
        except self.rules.RulesError as exc:
            raise RulesInvalidError(f"invalid rules: {exc}") from None

    def warnings(self, ruleset: Any) -> list:
        """What is valid but worth a second look (say a rule that allows shared role trust)."""
        return list(self.rules.warnings(ruleset))

    def facts_from_dict(self, raw: Any, source: str) -> Any:
        try:
            return self.facts.facts_from_dict(raw)
        except self.fact_errors as exc:
            raise RulesInvalidError(f"invalid facts in {source}: {exc}") from None


def find_checkout(start: Optional[str] = None) -> Optional[str]:
    """The nearest directory, from ``start`` (the current one) upwards, that holds the rules engine."""
    directory = os.path.abspath(start or os.getcwd())
    while True:
        if os.path.isfile(os.path.join(directory, MARKER)):
            return directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def default_rules_file() -> str:
    base = find_checkout() or os.getcwd()
    for candidate in DEFAULT_RULES:
        path = os.path.join(base, candidate)
        if os.path.isfile(path):
            return path
    return os.path.join(base, DEFAULT_RULES[0])


def _load_package_from(checkout: str) -> None:
    """Import ``chalicelib`` from ``checkout`` by its file location."""
    init = os.path.join(checkout, PACKAGE, "__init__.py")
    spec = importlib.util.spec_from_file_location(PACKAGE, init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    if spec is None or spec.loader is None:  # pragma: no cover - a file that exists always has a spec
        raise UsageError(f"cannot load {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise


def load_engine() -> Engine:
    """The rules engine, or UsageError saying how to get it."""
    if PACKAGE not in sys.modules and importlib.util.find_spec(PACKAGE) is None:
        checkout = find_checkout()
        if checkout is None:
            raise UsageError(
                "the policy commands need the broker's rules engine (chalicelib/policy/), which the wheel "
                "does not install: run them with broker.pyz (which carries it), or from inside a checkout "
                "of the broker repository")
        _load_package_from(checkout)
    try:
        rules = importlib.import_module(RULES_MODULE)
        facts = importlib.import_module(FACTS_MODULE)
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith(PACKAGE):  # say tomli, on a Python before 3.11 without it
            raise UsageError(f"the broker's rules engine needs the module {exc.name}, which this Python "
                             f"({sys.version.split()[0]}) lacks: run the policy commands with broker.pyz "
                             "(which carries it), or with the Python of the checkout's virtualenv "
                             "(.venv/bin/python -m broker ...)") from None
        raise UsageError(f"the broker's rules engine is incomplete here ({exc.name} is missing): "
                         "run the policy commands from a checkout of the broker repository") from None
    fact_errors: Tuple[type, ...] = (ValueError, TypeError, KeyError)
    try:
        fact_errors += (importlib.import_module(ERRORS_MODULE).BrokerError,)
    except (ImportError, AttributeError):
        pass
    return Engine(rules=rules, facts=facts, fact_errors=fact_errors)
