"""`vmm grade rubric --public` and `vmm grade diff`: what staff hand students, and what changed.

- `public_rubric(path)`: the rubric as TOML without its non-visible scenarios (Gradescope's
  `hidden`, `after_due_date`, `after_published`), everything else the same, so that a student
  running `vmm grade --rubric public.toml` on their own kernel gets exactly the grader's scores
  for the visible scenarios. Written from the parsed rubric (comments are not kept).
- `diff_reports(old, new)`: what changed between two gradings (two `--out` folders): scores
  per submission and per scenario, submissions added or gone, a different rubric.
"""

from __future__ import annotations

import math
import re
import tomllib

from vmm.errors import UsageError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def public_rubric(path: str) -> str:
    from .rubric import load_rubric
    rubric = load_rubric(path)                 # validates it, with the usual one-line errors
    with open(path, "rb") as f:
        data = tomllib.loads(f.read().decode("utf-8"))
    visible = [s for s, parsed in zip(data["scenario"], rubric.scenarios)
               if parsed.visibility == "visible"]
    if not visible:
        raise UsageError(f"rubric {path} has no visible scenario: a public rubric would be empty")
    hidden = len(rubric.scenarios) - len(visible)
    data["scenario"] = visible
    head = [f"# The public part of {rubric.title!r}: {len(visible)} visible scenario"
            f"{'s' * (len(visible) != 1)} of {len(rubric.scenarios)} "
            f"({hidden} not shown). Written by `vmm grade rubric --public`.",
            "# Grade your own kernel with it: vmm grade --rubric public.toml --out results/ "
            "YOUR_SUBMISSION", ""]
    return "\n".join(head) + dumps(data)


def dumps(data: dict) -> str:
    """TOML for a rubric's data: scalars and arrays first, then tables, then arrays of tables."""
    return _table(data, [])


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _basic(key)


def _string(text: str) -> str:
    if "\n" in text and "'''" not in text and not text.endswith("'") and not any(
            ord(c) < 32 and c not in "\n\t" or ord(c) == 127 for c in text):
        return "'''\n" + text + "'''"               # multi-line literal: scripts stay readable
    return _basic(text)


def _basic(text: str) -> str:
    out = ['"']
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 32 or ord(c) == 127:
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(c, f"\\u{ord(c):04x}"))
        else:
            out.append(c)
    return "".join(out) + '"'


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return ("-" if value < 0 else "") + ("inf" if math.isinf(value) else "nan")
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise UsageError(f"cannot write {value!r} as TOML")      # dates: rubrics have none


def _is_table_array(value) -> bool:
    return isinstance(value, list) and value and all(isinstance(v, dict) for v in value)


def _table(data: dict, path: list[str]) -> str:
    lines, tables, arrays = [], [], []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif _is_table_array(value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = ".".join(_key(p) for p in path + [key])
        out += f"\n[{name}]\n" + _table(value, path + [key])
    for key, items in arrays:
        name = ".".join(_key(p) for p in path + [key])
        for item in items:
            out += f"\n[[{name}]]\n" + _table(item, path + [key])
    return out


# --- diff -----------------------------------------------------------------------------------
def diff_reports(old_folder: str, new_folder: str) -> list[str]:
    """Lines saying what changed from the grading in `old_folder` to the one in `new_folder`
    (none when the scores are the same)."""
    from .reports import read_report
    old, new = read_report(old_folder), read_report(new_folder)
    lines = []
    if old["rubric"]["sha256"] != new["rubric"]["sha256"]:
        lines.append(f"rubric: {old['rubric']['path']} ({old['rubric']['sha256'][:12]}, max "
                     f"{old['rubric']['max_score']:g}) -> {new['rubric']['path']} "
                     f"({new['rubric']['sha256'][:12]}, max {new['rubric']['max_score']:g})")
    before = {s["name"]: s for s in old["submissions"]}
    after = {s["name"]: s for s in new["submissions"]}
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name), after.get(name)
        if a is None:
            lines.append(f"{name}: new, {b['score']:g}/{b['max_score']:g}")
            continue
        if b is None:
            lines.append(f"{name}: gone (was {a['score']:g}/{a['max_score']:g})")
            continue
        changes = []
        scenarios_a = {sc["name"]: sc for sc in a["scenarios"]}
        scenarios_b = {sc["name"]: sc for sc in b["scenarios"]}
        for scenario in list(scenarios_a) + [n for n in scenarios_b if n not in scenarios_a]:
            x, y = scenarios_a.get(scenario), scenarios_b.get(scenario)
            if x is None:
                changes.append(f"    + {scenario}: {y['score']:g}/{y['max_score']:g}")
            elif y is None:
                changes.append(f"    - {scenario} (was {x['score']:g}/{x['max_score']:g})")
            elif (x["score"], x["max_score"], x["reason"]) != (y["score"], y["max_score"],
                                                             y["reason"]):
                why = f": {y['reason']}" if y["reason"] and y["reason"] != x["reason"] else ""
                changes.append(f"    {scenario}: {x['score']:g} -> {y['score']:g}"
                               f"/{y['max_score']:g}{why}"[:300])
        if a["problem"] != b["problem"]:
            changes.append(f"    problem: {a['problem'] or '(none)'} -> {b['problem'] or '(none)'}")
        if (a["score"], a["max_score"]) != (b["score"], b["max_score"]) or changes:
            delta = b["score"] - a["score"]
            lines.append(f"{name}: {a['score']:g}/{a['max_score']:g} -> "
                         f"{b['score']:g}/{b['max_score']:g} ({delta:+g})")
            lines += changes
    return lines
