"""`vmm grade bundle`: a Gradescope autograder zip that grades with vmm.

Gradescope runs each submission in a container of its own: the zip's `setup.sh` runs once
when the autograder image is built, `run_autograder` once per submission, with the student's
files in /autograder/submission, and Gradescope reads /autograder/results/results.json
(Gradescope's autograder specification). The zip holds:

    setup.sh            installs what grading needs (a Python >= 3.11 with venv, make,
                        binutils, gcc, bubblewrap) with apt-get where it is missing, and vmm
                        from the wheel beside it into /autograder/vmm-venv
    run_autograder      grades /autograder/submission with the rubric and writes results.json
    rubric.toml         the rubric
    vmm-VERSION-py3-none-any.whl   vmm itself: set-up needs no package index for vmm (its
                        dependencies come from PyPI as usual)
    README.txt          what this is

run_autograder builds in vmm's bubblewrap sandbox where the container allows it (Docker's
default seccomp profile usually does not), and otherwise without it, saying so in the output:
the container is Gradescope's own isolation of one submission.
The submission is the folder itself when it has a Makefile, its one file when it holds just
one (a guest binary), and refused with a score of 0 and a message otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import zipfile
from pathlib import Path

from vmm import __version__
from vmm.errors import UsageError

DATE = (2026, 1, 1, 0, 0, 0)          # fixed zip timestamps: the same rubric, the same zip

SETUP_SH = r"""#!/usr/bin/env bash
# Gradescope set-up for vmm (run once, as root, when the autograder image is built).
set -euo pipefail
cd "$(dirname "$0")"
need=()
for pair in make:make as:binutils gcc:gcc bwrap:bubblewrap; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
python=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$(command -v "$candidate"); break
  fi
done
[ -n "$python" ] || need+=(python3.11 python3.11-venv)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
[ -n "$python" ] || python=$(command -v python3.11)
"$python" -m venv /autograder/vmm-venv
/autograder/vmm-venv/bin/python -m pip install --quiet --disable-pip-version-check \
  "$(ls "$PWD"/vmm-*.whl)"
/autograder/vmm-venv/bin/vmm --help >/dev/null
echo "vmm set up: $(/autograder/vmm-venv/bin/vmm --version 2>/dev/null || echo ok)"
"""

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# Gradescope: grade /autograder/submission with vmm; write /autograder/results/results.json.
set -uo pipefail
root=${AUTOGRADER_ROOT:-/autograder}
source_dir="$root/source"
vmm="$root/vmm-venv/bin/vmm"
python="$root/vmm-venv/bin/python"
out="$root/results/vmm"
mkdir -p "$root/results"
rm -rf "$out"
exec "$python" -m harness.bundle run "$root/submission" "$source_dir/rubric.toml" "$out" \
  "$root/results/results.json" "$source_dir/bundle.json"
"""

README = """This is a Gradescope autograder made by `vmm grade bundle` (vmm {version}).
Upload the zip as the assignment's autograder ("Zip file upload"). The rubric is rubric.toml;
bundle.json holds the bundle's options. Students can replay what the grader saw with the
`vmm replay` command each test's output names; the traces are in the results' vmm/ folder.
"""


# --- the wheel --------------------------------------------------------------------------------
def _package_files() -> list[tuple[str, bytes]]:
    """vmm's and harness's files as installed here (sources and package data)."""
    import harness
    import vmm
    files = []
    for package in (vmm, harness):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and \
                    path.suffix in (".py", ".toml", ".txt", ".json", ".ttf", ".bdf", ".psf"):
                files.append((f"{package.__name__}/{path.relative_to(root).as_posix()}",
                              path.read_bytes()))
    return files


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def wheel_bytes() -> tuple[str, bytes]:
    """A wheel of the running vmm (name, bytes), built from its installed files: it works for
    an editable install as for a wheel, and needs no build tool."""
    from importlib import metadata
    try:
        dist = metadata.distribution("vmm")
        requires = [r for r in (dist.requires or []) if "extra ==" not in r]
        entry_points = dist.entry_points
        python = dist.metadata.get("Requires-Python") or ">=3.11"
    except metadata.PackageNotFoundError:
        requires, entry_points, python = [], [], ">=3.11"
    name = f"vmm-{__version__}-py3-none-any.whl"
    info = f"vmm-{__version__}.dist-info"
    meta = "".join(["Metadata-Version: 2.1\nName: vmm\n", f"Version: {__version__}\n",
                    "Summary: A deterministic record-and-replay micro VMM for small x86 guest "
                    "kernels\n", f"Requires-Python: {python}\n",
                    *(f"Requires-Dist: {r}\n" for r in requires)])
    groups: dict[str, list[str]] = {}
    for ep in entry_points:
        groups.setdefault(ep.group, []).append(f"{ep.name} = {ep.value}")
    if not groups:
        groups = {"console_scripts": ["vmm = vmm.cli:main"]}
    eps = "".join(f"[{g}]\n" + "\n".join(lines) + "\n\n" for g, lines in sorted(groups.items()))
    files = _package_files() + [
        (f"{info}/METADATA", meta.encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: vmm grade bundle\n"
                          b"Root-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{info}/entry_points.txt", eps.encode()),
        (f"{info}/top_level.txt", b"harness\nvmm\n")]
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files)
    record += f"{info}/RECORD,,\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as whl:
        for path, data in files + [(f"{info}/RECORD", record.encode())]:
            whl.writestr(zipfile.ZipInfo(path, DATE), data, zipfile.ZIP_DEFLATED)
    return name, buffer.getvalue()


# --- the bundle -------------------------------------------------------------------------------
def build_bundle(rubric_path: str, out_zip: str, leaderboard: bool = False) -> list[str]:
    """Write the autograder zip; return the names in it."""
    from .rubric import load_rubric
    load_rubric(rubric_path)                          # refuse a bad rubric now, not on upload
    wheel_name, wheel = wheel_bytes()
    options = {"vmm": __version__, "leaderboard": leaderboard}
    entries = [("setup.sh", SETUP_SH.encode(), 0o755),
               ("run_autograder", RUN_AUTOGRADER.encode(), 0o755),
               ("rubric.toml", Path(rubric_path).read_bytes(), 0o644),
               ("bundle.json", (json.dumps(options, indent=2) + "\n").encode(), 0o644),
               ("README.txt", README.format(version=__version__).encode(), 0o644),
               (wheel_name, wheel, 0o644)]
    try:
        with zipfile.ZipFile(out_zip, "w", zipfile.ZIP_DEFLATED) as bundle:
            for name, data, mode in entries:
                info = zipfile.ZipInfo(name, DATE)
                info.external_attr = (0o100000 | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                bundle.writestr(info, data)
    except OSError as e:
        raise UsageError(f"cannot write {out_zip}: {e.strerror}") from None
    return [name for name, _, _ in entries]


# --- inside Gradescope: one submission --------------------------------------------------------
def _submission(folder: Path) -> tuple[str | None, str]:
    """(what to grade, problem): the folder with a Makefile, or its only file."""
    if not folder.is_dir():
        return None, f"no submission folder at {folder}"
    if any((folder / m).is_file() for m in ("Makefile", "makefile", "GNUmakefile")):
        return str(folder), ""
    files = [p for p in folder.iterdir() if p.name not in (".", "..")]
    if len(files) == 1 and files[0].is_file():
        return str(files[0]), ""
    if len(files) == 1 and files[0].is_dir():
        return _submission(files[0])
    return None, ("hand in either your kernel's source with a Makefile at the top, or just "
                  "the guest binary (one file)")


def run(submission_dir: str, rubric: str, out: str, results_json: str, options_json: str,
        sandbox: bool) -> int:
    """Grade one Gradescope submission and write Gradescope's results.json; 0 even when the
    submission fails (a failing student is a result, not an autograder error)."""
    from .grader import grade
    try:
        options = json.loads(Path(options_json).read_text())
    except (OSError, ValueError):
        options = {}
    target, problem = _submission(Path(submission_dir))
    note = ""
    if sandbox and target is not None and os.path.isdir(target):
        from .sandbox import unavailable_reason
        if unavailable_reason():   # no user namespaces here: the container is the isolation
            sandbox = False
            note = ("\n(Built without vmm's sandbox: this container cannot make one; "
                    "Gradescope's container isolates the submission.)")
    if target is None:
        results = {"score": 0, "output": f"vmm could not grade this submission: {problem}",
                   "tests": []}
    else:
        report = grade([target], rubric, out, sandbox=sandbox)
        sub = report["submissions"][0]
        results = json.loads((Path(out) / sub["name"] / "results.json").read_text())
        results["output"] += (f"\nThe traces are in vmm/{sub['name']}/traces/ of the results."
                              if os.path.isdir(Path(out) / sub["name"] / "traces") else "")
        results["output"] += note
        if options.get("leaderboard"):
            results["leaderboard"] = [{"name": "score", "value": sub["score"], "order": "desc"}]
    Path(results_json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 6 and argv[0] == "run":
        try:
            return run(*argv[1:6], sandbox="--no-sandbox" not in argv[6:])
        except UsageError as e:
            results = {"score": 0, "output": f"vmm could not grade this submission: {e}",
                       "tests": []}
            Path(argv[4]).write_text(json.dumps(results, indent=2) + "\n")
            print(f"vmm: error: {e}", file=sys.stderr)
            return 0
    print("usage: python -m harness.bundle run SUBMISSION_DIR RUBRIC OUT RESULTS_JSON "
          "BUNDLE_JSON [--no-sandbox]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
