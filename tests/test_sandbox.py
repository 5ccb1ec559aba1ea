"""The grader's build sandbox, attacked: one test per thing a student's submission may try.

Every test grades a hostile submission together with an honest one, through the real
`vmm grade` path (real bubblewrap, real make, real KVM or emulator), and checks both that the
attack failed (the build fails, or the guest scores only what it earns) and that the honest
submission still gets full marks with a report identical to one graded alone.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, make_source_submission, vmm_command
from harness.grader import grade, submission_names
from harness.limits import Cgroup
from harness.sandbox import unavailable_reason

pytestmark = [pytest.mark.kvm, pytest.mark.skipif(
    unavailable_reason() is not None,
    reason=f"the build sandbox cannot run here: {unavailable_reason()}")]

def _cgroups() -> bool:
    group = Cgroup.create(f"vmm-test-{os.getpid()}", None, None)
    if group is not None:
        group.remove()
    return group is not None


CGROUPS = _cgroups()
# Sleep durations unique to this test process, so that a run of the suite on another Python
# beside this one never shows this run a process of its own.
S = 10_000 + (os.getpid() % 10_000) * 10
SECRET = "RUBRIC-SECRET-7f3a"           # in the rubric: no build may ever see it
OTHER_SECRET = "OTHER-STUDENT-SECRET-91c2"  # in another student's source

RUBRIC = f"""# {SECRET}
title = "Sandbox"
[boot]
mode = "real"
load = 0x1000
mem = "16M"
[build]
command = "make"
guest = "echo.bin"
timeout = "20s"
memory = "256M"
processes = 64
disk = "32M"
file_size = "8M"
files = 200
[limits]
max_time = "5s"
wall_time = "10s"
[[scenario]]
name = "echo"
points = 100
script = '''
sendline "hi"
wait 1200ms
'''
  [[scenario.check]]
  contains = "hi"
"""

BUILD = ("\tas --32 -o echo.o echo.s\n"
         "\tld -m elf_i386 -Ttext 0x1000 --oformat binary -o echo.bin echo.o\n")


def source(folder: Path, recipe: str = "", extra: dict | None = None) -> Path:
    """A submission directory: the echo guest's source and a Makefile whose echo.bin rule runs
    `recipe` (the attack) before building."""
    lines = "".join(f"\t{line}\n" for line in recipe.strip().splitlines() if line.strip())
    return make_source_submission(folder, f"echo.bin: echo.s ports.inc\n{lines}{BUILD}", extra)


def tarball(path: Path, members) -> Path:
    """A .tar.gz of (TarInfo, bytes or None) members, written as given."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def regular(name: str, data: bytes, mode: int = 0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


@pytest.fixture(scope="module")
def honest_alone(tmp_path_factory) -> dict:
    """The honest submission's results.json when it is graded alone."""
    tmp = tmp_path_factory.mktemp("alone")
    (tmp / "rubric.toml").write_text(RUBRIC)
    grade([str(source(tmp / "honest"))], str(tmp / "rubric.toml"), str(tmp / "out"))
    return _results(tmp / "out" / "honest" / "results.json")


@pytest.fixture
def world(tmp_path, honest_alone):
    """A rubric with a secret, an honest submission, another student's source with a secret."""
    rubric = tmp_path / "rubric.toml"
    rubric.write_text(RUBRIC)
    honest = source(tmp_path / "subs" / "honest")
    other = source(tmp_path / "subs" / "other", extra={"notes.txt": OTHER_SECRET})
    return {"tmp": tmp_path, "rubric": rubric, "honest": honest, "other": other,
            "out": tmp_path / "out", "honest_results": honest_alone}


def _results(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("execution_time")
    return data


def run(world, *submissions) -> dict:
    """Grade the honest submission with these; check that it is untouched; the report by name."""
    before = world["rubric"].read_bytes()
    report = grade([str(world["honest"]), *map(str, submissions)], str(world["rubric"]),
                   str(world["out"]))
    by_name = {s["name"]: s for s in report["submissions"]}
    assert by_name["honest"]["score"] == 100, by_name["honest"]
    assert _results(world["out"] / "honest" / "results.json") == world["honest_results"]
    assert world["rubric"].read_bytes() == before
    assert (world["honest"] / "Makefile").read_text().startswith("echo.bin:")
    leaked = [p for p in world["tmp"].rglob("*") if p.is_file() and not p.is_symlink()
              and p.parent != world["tmp"] and world["out"] in p.parents
              and (SECRET.encode() in p.read_bytes() or OTHER_SECRET.encode() in p.read_bytes())]
    assert not leaked, f"secrets leaked into {leaked}"
    return by_name


def no_process_with(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return False
            except OSError:
                pass
    return True


# --- the filesystem ---------------------------------------------------------------------------
def test_writing_outside_the_build_directory_fails(world):
    tmp = world["tmp"]
    attack = source(tmp / "subs" / "writer", f"""
-echo pwned > {world['rubric']}
-echo 'title="x"' > {tmp}/out/report.json
-echo hlt > {world['other']}/echo.s
-mkdir -p {tmp}/out/honest && echo 0 > {tmp}/out/honest/results.json
-echo pwned > /tmp/../escaped; echo pwned > /usr/pwned; echo pwned > /etc/pwned
-echo pwned > $(HOME)/../pwned; touch /pwned
""")
    by_name = run(world, attack)
    assert by_name["writer"]["score"] == 100              # its own guest still earns its marks
    assert "hlt" not in (world["other"] / "echo.s").read_text()
    assert not Path("/usr/pwned").exists() and not Path("/pwned").exists()
    log = (world["out"] / "writer" / "build.log").read_text()
    assert "Read-only file system" in log or "No such file or directory" in log


def test_reading_the_rubric_and_other_submissions_fails(world):
    tmp = world["tmp"]
    attack = source(tmp / "subs" / "reader", f"""
-cat {world['rubric']} {world['other']}/notes.txt
-for p in /proc/[0-9]*; do tr '\\0' ' ' < $$p/cmdline; echo; done
-cat /proc/1/environ /proc/self/mountinfo
-find / -xdev -name '*.toml' -exec cat {{}} +
-ls -la / /tmp /proc
""")
    by_name = run(world, attack)                        # run() checks no output holds a secret
    assert by_name["reader"]["score"] == 100
    log = (world["out"] / "reader" / "build.log").read_text()
    assert f"cat: {world['rubric']}: No such file or directory" in log


def test_a_guest_that_is_a_symlink_is_refused(world):
    attack = source(world["tmp"] / "subs" / "linker",
                    f"ln -sf {world['rubric']} echo.bin; exit 0")
    (attack / "Makefile").write_text(f"echo.bin:\n\tln -sf {world['rubric']} echo.bin\n")
    etc = source(world["tmp"] / "subs" / "etc")
    (etc / "Makefile").write_text("echo.bin:\n\tln -sf /etc/ld.so.cache echo.bin\n")
    by_name = run(world, attack, etc)
    for name in ("linker", "etc"):
        assert by_name[name]["score"] == 0
        assert by_name[name]["problem"] == "the build's echo.bin is a symbolic link, not a file"


def test_a_guest_binary_that_is_a_symlink_is_refused(world):
    link = world["tmp"] / "subs" / "link.bin"
    link.symlink_to(world["rubric"])
    by_name = run(world, link)
    assert by_name["link.bin"]["score"] == 0
    assert "symbolic link" in by_name["link.bin"]["problem"]


# --- processes ----------------------------------------------------------------------------------
def test_no_process_of_a_build_outlives_it(world):
    out = world["out"]
    attack = source(world["tmp"] / "subs" / "lingerer", f"""
sleep {S + 1} &
setsid sleep {S + 2} &
nohup sleep {S + 3} >/dev/null 2>&1 &
( (sleep {S + 4} &) & )
( while true; do echo 0 > {out}/lingerer/results.json 2>/dev/null; sleep 0.1; done ) &
""")
    by_name = run(world, attack)
    assert by_name["lingerer"]["score"] == 100
    time.sleep(0.3)
    for i in range(1, 5):
        assert no_process_with(f"sleep\x00{S + i}"), i
    assert json.loads((out / "lingerer" / "results.json").read_text())["score"] == 100


def test_a_fork_bomb_is_bounded_and_reported(world):
    attack = source(world["tmp"] / "subs" / "bomb")
    bomb = f"bomb-{os.getpid()}.sh"
    (attack / bomb).write_text("b() { b | b & }; b\nsleep 30\n")
    (attack / "Makefile").write_text(f"echo.bin:\n\tsh {bomb}\n")
    world["rubric"].write_text(RUBRIC.replace('timeout = "20s"', 'timeout = "3s"'))
    started = time.monotonic()
    by_name = run(world, attack)
    assert by_name["bomb"]["score"] == 0
    if CGROUPS:                       # the pids cgroup says so; rlimits alone cannot
        assert by_name["bomb"]["build_limit"] == "processes", by_name["bomb"]
        assert "held at its process limit (64)" in by_name["bomb"]["problem"]
    else:
        assert by_name["bomb"]["build_limit"] in ("processes", "time"), by_name["bomb"]
    assert time.monotonic() - started < 30
    assert no_process_with(bomb)


def test_memory_exhaustion_is_bounded_and_reported(world):
    attack = source(world["tmp"] / "subs" / "hog",
                    "python3 -c 'x = bytearray(2 << 30); print(len(x))'")
    by_name = run(world, attack)
    assert by_name["hog"]["score"] == 0
    assert by_name["hog"]["build_limit"] == "memory", by_name["hog"]
    assert "memory limit (256M)" in by_name["hog"]["problem"]


def test_disk_exhaustion_is_bounded_and_reported(world):
    attack = source(world["tmp"] / "subs" / "filler",
                    "for i in 1 2 3 4 5 6; do dd if=/dev/zero of=f$$i bs=1M count=7; done")
    big = source(world["tmp"] / "subs" / "bigfile", "dd if=/dev/zero of=big bs=1M count=100")
    by_name = run(world, attack, big)
    assert by_name["filler"]["score"] == 0 and by_name["filler"]["build_limit"] == "disk"
    assert by_name["bigfile"]["score"] == 0
    assert by_name["bigfile"]["build_limit"] == "file-size", by_name["bigfile"]


# --- the network --------------------------------------------------------------------------------
def test_no_network_no_sockets_no_nsenter(world):
    tmp = world["tmp"]
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0vmm-sandbox-test-{os.getpid()}")
    abstract.listen()
    path_sock = socket.socket(socket.AF_UNIX)
    path_sock.bind(str(tmp / "grader.sock"))
    path_sock.listen()
    accepted = []
    stop = threading.Event()

    def accept_all():
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except (TimeoutError, OSError):
                pass
    thread = threading.Thread(target=accept_all, daemon=True)
    thread.start()
    probe = ("import socket, sys\n"
             "kind, where = sys.argv[1], sys.argv[2]\n"
             "s = socket.socket(socket.AF_UNIX if kind == 'unix' else socket.AF_INET)\n"
             "s.settimeout(2)\n"
             "s.connect(where.replace('@', '\\0') if kind == 'unix' else "
             "('127.0.0.1', int(where)))\n"
             "print('REACHED', kind)\n")
    attack = source(tmp / "subs" / "netter", f"""
-python3 probe.py tcp {port}
-python3 probe.py unix @vmm-sandbox-test-{os.getpid()}
-python3 probe.py unix {tmp}/grader.sock
-nsenter --net=/proc/{os.getpid()}/ns/net python3 probe.py tcp {port}
-nsenter -t 1 -n python3 probe.py tcp {port}
""", extra={"probe.py": probe})
    try:
        by_name = run(world, attack)
    finally:
        stop.set()
        thread.join()
        server.close()
        abstract.close()
        path_sock.close()
    log = (world["out"] / "netter" / "build.log").read_text()
    assert accepted == []
    assert "REACHED" not in log.replace("print('REACHED'", ""), log
    assert log.count("Traceback") == 3          # every connect failed inside the sandbox
    assert log.count("nsenter: ") == 2, log
    assert by_name["netter"]["score"] == 100


# --- tarballs -----------------------------------------------------------------------------------
def honest_members(prefix: str = "") -> list:
    return [regular(prefix + "echo.s", (ROOT / "guests" / "echo.s").read_bytes()),
            regular(prefix + "ports.inc", (ROOT / "guests" / "include" / "ports.inc").read_bytes()),
            regular(prefix + "Makefile", f"echo.bin: echo.s ports.inc\n{BUILD}".encode())]


def symlink(name: str, target: str):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def test_tar_traversal_is_refused(world):
    subs = world["tmp"] / "subs"
    dotdot = tarball(subs / "dotdot.tar.gz",
                     honest_members() + [regular("../../escaped.txt", b"x")])
    absolute = tarball(subs / "absolute.tgz", honest_members() + [regular("/tmp/abs.txt", b"x")])
    link = tarball(subs / "link.tar.gz", [symlink("out", "/")] + [regular("out/tmp/x", b"x")])
    hard = tarfile.TarInfo("hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/passwd"
    hardlink = tarball(subs / "hard.tar.gz", honest_members() + [(hard, None)])
    fifo = tarfile.TarInfo("fifo")
    fifo.type = tarfile.FIFOTYPE
    device = tarball(subs / "fifo.tar.gz", honest_members() + [(fifo, None)])
    by_name = run(world, dotdot, absolute, link, hardlink, device)
    assert not (world["tmp"] / "escaped.txt").exists() and not Path("/tmp/abs.txt").exists()
    expect = {"dotdot": "leads out of the submission", "absolute": "is an absolute path",
              "link": "is a link: links are not accepted",
              "hard": "is a link: links are not accepted",
              "fifo": "is a device or FIFO"}
    for name, words in expect.items():
        assert by_name[name]["score"] == 0 and words in by_name[name]["problem"], by_name[name]


def test_the_path_max_trick_is_refused(world):
    """CVE-2025-4517: nested directories with long names and symlinks that resolve past
    PATH_MAX, so that tarfile's filter="data" misjudges where a final link points."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    members, path = [], ""
    for step in steps:
        members.append(_dir(os.path.join(path, comp)))
        members.append(symlink(os.path.join(path, step), comp))
        path = os.path.join(path, comp)
    linkpath = os.path.join("/".join(steps), "l" * 254)
    members.append(symlink(linkpath, "../" * len(steps)))
    members.append(symlink("escape", linkpath + "/../../../../../../../../../tmp"))
    members.append(regular("escape/pwned-by-tar", b"x"))
    trick = tarball(world["tmp"] / "subs" / "trick.tar.gz", members)
    by_name = run(world, trick)
    assert by_name["trick"]["score"] == 0 and "links are not accepted" in \
        by_name["trick"]["problem"]
    assert not Path("/tmp/pwned-by-tar").exists()


def _dir(name: str):
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


def test_tar_bombs_are_refused(world):
    subs = world["tmp"] / "subs"
    many = tarball(subs / "many.tar.gz", honest_members() +
                   [regular(f"f{i}", b"") for i in range(300)])
    huge_info = tarfile.TarInfo("huge")
    huge_info.size = 64 << 20
    with tarfile.open(subs / "huge.tar.gz", "w:gz", compresslevel=1) as tar:
        tar.addfile(huge_info, _Zeros(huge_info.size))
    sparse_dir = world["tmp"] / "sparse-src"
    sparse_dir.mkdir()
    with open(sparse_dir / "sparse", "wb") as f:
        f.truncate(64 << 30)                                 # 64 GiB, all hole
    subprocess.run(["tar", "-czSf", str(subs / "sparse.tar.gz"), "-C", str(sparse_dir),
                    "sparse"], check=True)
    assert (subs / "sparse.tar.gz").stat().st_size < 100_000
    by_name = run(world, many, subs / "huge.tar.gz", subs / "sparse.tar.gz")
    assert "more than 200 files" in by_name["many"]["problem"]
    assert by_name["many"]["build_limit"] == "files"
    assert "over the limit of 8388608 per file" in by_name["huge"]["problem"]
    assert "68719476736 bytes, over the limit" in by_name["sparse"]["problem"]
    for name in ("many", "huge", "sparse"):
        assert by_name[name]["score"] == 0


class _Zeros(io.RawIOBase):
    def __init__(self, size):
        self.left = size

    def readable(self):
        return True

    def readinto(self, buffer):
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def test_a_tarball_is_unpacked_and_built_on_every_python(world, tmp_path):
    """A tarball with the usual single top directory: unpacked in the sandbox by the host's
    /usr/bin/python3 (the oldest Python vmm supports), whatever Python runs vmm."""
    good = tarball(world["tmp"] / "subs" / "bob.tar.gz", [_dir("bob-echo")] +
                   honest_members("bob-echo/"))
    by_name = run(world, good)
    assert by_name["bob"]["score"] == 100 and by_name["bob"]["build_status"] == "ok"


# --- names --------------------------------------------------------------------------------------
def test_odd_names_stay_inside_out_and_collisions_lose_nothing(world):
    subs = world["tmp"] / "subs"
    good = honest_members()
    weird = [tarball(subs / "...tar.gz", good), tarball(subs / "..tgz", good),
             tarball(subs / "with space.tar.gz", good), tarball(subs / "Zoë.tgz", good)]
    (subs / "a").mkdir()
    (subs / "b").mkdir()
    collide = [tarball(subs / "a" / "x.tgz", good), tarball(subs / "b" / "x.tgz", good),
               tarball(subs / "x-2.tgz", good)]
    by_name = run(world, *weird, *collide)
    names = sorted(by_name)
    assert all(n not in ("", ".", "..") and not n.startswith(".") for n in names)
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
               for n in names)
    assert len(names) == 8 and all(s["score"] == 100 for s in by_name.values())
    assert by_name["x-2"]["source"] == str(subs / "x-2.tgz")
    assert {by_name["x"]["source"], by_name["x-3"]["source"]} == {
        str(subs / "a" / "x.tgz"), str(subs / "b" / "x.tgz")}
    assert sorted(p.name for p in world["tmp"].iterdir()) == ["out", "rubric.toml", "subs"]
    assert (world["out"] / "report.json").exists()


def test_names_of_guests_handed_in_as_folder_slash_guest():
    subs = submission_names(["alice/guest.bin", "bob/guest.bin", "carol.bin", "...tar.gz",
                             "x/report.json"])
    assert [s.name for s in subs] == ["alice", "bob", "carol.bin", "submission", "submission-2"]


# --- the grader itself -------------------------------------------------------------------------
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_interrupting_vmm_grade_ends_every_build_process(world, jobs):
    attack = source(world["tmp"] / "subs" / "slow", f"sleep {S + 7} & sleep {S + 8}")
    child = subprocess.Popen(vmm_command("grade", "--rubric", str(world["rubric"]), "--out",
                                         str(world["out"]), "-j", jobs, str(attack),
                                         str(world["honest"])),
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for _ in range(200):
        if not no_process_with(f"sleep\x00{S + 8}"):
            break
        time.sleep(0.05)
    else:
        child.kill()
        pytest.fail("the build never started")
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    lines = err.decode().splitlines()
    assert child.returncode == 143 and lines[-1] == "vmm: error: terminated (SIGTERM)", lines
    assert all(line.startswith("vmm: graded ") for line in lines[:-1]), lines
    time.sleep(0.3)
    assert no_process_with(f"sleep\x00{S + 7}") and no_process_with(f"sleep\x00{S + 8}")


def test_without_bubblewrap_source_submissions_are_refused(world, tmp_path, vmm):
    bin_dir = tmp_path / "bin"                      # a PATH with make and the toolchain only
    bin_dir.mkdir()
    for tool in ("make", "as", "ld", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    env = {"PATH": f"{bin_dir}:{Path(sys.executable).parent}"}
    r = vmm("grade", "--rubric", world["rubric"], "--out", tmp_path / "o", world["honest"],
            env=env)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r
    assert "needs bubblewrap" in r.stderr and "apt-get install bubblewrap" in r.stderr
    assert not (tmp_path / "o" / "report.json").exists()
    r = vmm("grade", "--rubric", world["rubric"], "--out", tmp_path / "o2", "--no-sandbox",
            world["honest"], env=env)
    assert r.returncode == 0 and r.lines == ["honest: 100/100"], r
    r = vmm("grade", "--rubric", world["rubric"], "--out", tmp_path / "o3",
            ROOT / "guests" / "build" / "echo.bin", env=env)   # binaries need no sandbox
    assert r.returncode == 0 and r.lines == ["echo.bin: 100/100"], r
