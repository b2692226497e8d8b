"""Argument parsing shared by every command: each `--some-flag` also reads `SOME_FLAG` from the
environment (TGI style). Precedence: command line > environment > built-in default.

Environment is read when `parse_args` runs, never at import time.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def boolean(text: str) -> bool:
    """A boolean value as flags and environment variables spell it: on/true/yes/1, off/false/no/0."""
    low = text.strip().lower()
    if low not in _TRUE | _FALSE:
        raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (use on/off or true/false)")
    return low in _TRUE


def env_name(action: argparse.Action) -> str | None:
    """`--max-new-tokens` -> `MAX_NEW_TOKENS`; positionals use their dest (`model_dir` -> `MODEL_DIR`)."""
    if action.nargs == 0 and action.default == argparse.SUPPRESS:  # --help, --version
        return None
    longs = [s for s in action.option_strings if s.startswith("--")]
    if longs:
        return longs[0][2:].replace("-", "_").upper()
    if not action.option_strings and action.dest not in ("help", argparse.SUPPRESS):
        return action.dest.upper()
    return None


class EnvArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose options fall back to upper-case environment variables.

    `env_aliases` maps a dest to extra variable names (e.g. `model_id` also reads `MODEL_ID`).
    """

    def __init__(self, *args: Any, env_aliases: Mapping[str, Sequence[str]] | None = None,
                 **kwargs: Any) -> None:
        self._env_aliases = dict(env_aliases or {})
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        name = env_name(action)
        if name and action.help is not argparse.SUPPRESS:
            names = [name, *self._env_aliases.get(action.dest, ())]
            action.help = f"{action.help or ''} [env: {', '.join(names)}]".strip()
        return action

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None,
                         ) -> tuple[argparse.Namespace, list[str]]:
        self._apply_environment(os.environ)
        return super().parse_known_args(args, namespace)

    def _apply_environment(self, environ: Mapping[str, str]) -> None:
        for action in self._actions:
            name = env_name(action)
            if not name:
                continue
            for var in (name, *self._env_aliases.get(action.dest, ())):
                if var in environ:
                    self._set_default(action, environ[var], var)
                    break

    def _set_default(self, action: argparse.Action, raw: str, var: str) -> None:
        if action.nargs == 0 and isinstance(action.const, bool):  # store_true / store_false
            try:
                value = boolean(raw)
            except argparse.ArgumentTypeError:
                self.error(f"environment variable {var}={raw!r} is not a boolean (use true/false)")
            action.default = value if action.const else not value
            return
        convert = action.type or (lambda s: s)
        try:
            value = convert(raw)  # type: ignore[operator]
        except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
            self.error(f"environment variable {var}={raw!r}: {exc}")
        if action.choices is not None and value not in action.choices:
            self.error(f"environment variable {var}={raw!r}: choose from {sorted(action.choices)}")
        action.default = value
        if not action.option_strings:
            action.nargs = "?"
        action.required = False


def prepare_outputs(files: Sequence[str | os.PathLike[str] | None] = (),
                    folders: Sequence[str | os.PathLike[str] | None] = ()) -> None:
    """Create the folders output files will be written in (`files`: their parents) and output folders
    themselves, before a run that may take long; None entries (an option left unset) are skipped.
    ValueError with the path when one cannot be made (e.g. a plain file is in the way)."""
    wanted = [os.path.dirname(os.path.abspath(f)) for f in files if f is not None and str(f)]
    wanted += [os.path.abspath(d) for d in folders if d is not None and str(d)]
    for folder in wanted:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None
