"""Agent environments by name: each entry is a `module:function` that returns `(Environment, ReactFormat)`
from keyword options (corpus=, live_wiki=, catalog=, ...). Imported only when used."""

from __future__ import annotations

import importlib

from slmkit.agents.base import Environment, ReactFormat
from slmkit.errors import SlmkitError

ENVIRONMENTS: dict[str, str] = {
    "hotpotqa": "slmkit.agents.hotpotqa:load_environment",
    "fever": "slmkit.agents.fever:load_environment",
    "alfworld": "slmkit.agents.alfworld:load_environment",
    "webshop": "slmkit.agents.webshop:load_environment",
}


def load_environment(name: str, **options) -> tuple[Environment, ReactFormat]:
    if name not in ENVIRONMENTS:
        raise SlmkitError(f"unknown agent environment '{name}' (known: {', '.join(ENVIRONMENTS)})")
    module_name, func_name = ENVIRONMENTS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise SlmkitError(f"agent environment '{name}' is not available in this install ({module_name} not found)") from None
        raise SlmkitError(f"agent environment '{name}' needs a package that is not installed ({exc.name}); "
                          f"install slmkit[agents]") from None
    func = getattr(module, func_name, None)
    if func is None:
        raise SlmkitError(f"agent environment '{name}': {module_name} has no {func_name}()")
    return func(**{k: v for k, v in options.items() if v is not None})
