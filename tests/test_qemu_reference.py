"""QEMU is the reference for the pc kernels (guests/pc/, issue 14).

First, each kernel runs under QEMU (`qemu-system-i386 -kernel`, or GRUB for multiboot2: QEMU's
-kernel loads multiboot1 only) and what it prints on COM1 and 0xE9, its final screen and its
exit status must be exactly what the kernel is written to print: this validates the kernels,
and the harness (tests/qemu_reference.py), against the reference.

Then vmm runs the same kernels on the pc board, on every usable backend, and must show what
QEMU showed: the same COM1 and 0xE9 lines and final screen rows, the same exit status. Lines
that report the loader's own choices (its name, memory map, where modules land) differ by
design and are compared by shape only.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest

from conftest import GUESTS, test_backends
from qemu_reference import (QEMU_I386, Module, grub_unusable, qemu_unusable, run_qemu,
                            run_vmm)

PC = GUESTS / "pc"

QEMU_SKIP = qemu_unusable(QEMU_I386)
GRUB_SKIP = grub_unusable()

OK = (0x10 << 1) | 1                    # every kernel writes 0x10 to 0xF4 when all is well


@dataclass
class Case:
    id: str
    kernel: str
    screen: list[str]
    debugcon: list[str]
    serial: list[str] = field(default_factory=list)
    status: int = OK
    modules: tuple[Module, ...] = ()
    append: str | None = None
    grub: bool = False                  # multiboot2: QEMU boots it under GRUB
    attrs: dict = field(default_factory=dict)   # (row, col) -> attribute byte, under QEMU

    @property
    def path(self):
        return PC / self.kernel


HELLO = ["Hello from mb1-hello, a multiboot1 ELF kernel!",
         "magic 0x2BADB002 ok, COM1 passed its loopback probe",
         "VGA text 80x25 at 0xB8000, in colour",
         "misc output: colour, cursor at row 3 col 0, retrace toggles"]
AOUT = ["mb1-aout: a flat binary loaded by the multiboot a.out kludge",
        "image at 0x00100000: the file's first byte is the header's magic",
        "bss: 65536 bytes, all zero",
        "mb1-aout: done"]
GCCNOTE = ["mb1-gccnote: linked by gcc's default script, a note segment far away",
           ".data 0x600dda7a, .bss zero",
           "mb1-gccnote: done"]
FLAT0 = ["flat0: a raw protected-mode guest linked at 0x00000000",
         "own GDT: CS=0x08 DS=0x10, CR0.PE=1 CR0.PG=0",
         "scratch 0x010-0x3ff: 1008 bytes written, 0 read back wrong",
         "flat0: done"]
MB2 = ["mb2-long: a multiboot2 ELF64 kernel, now in long mode",
       "CR0.PG=1 CR4.PAE=1 EFER.LMA=1",
       "cmdline: hello from the loader",
       "tags: cmdline yes, loader name yes, meminfo yes, mmap yes, end yes",
       "mb2-long: done"]
REAL16 = ["real16: an ELF32 with a 16-bit entry at 0x8000",
          "CR0.PE=0: real mode",
          "segment 0x0900:0x0010 is linear 0x9010",
          "real16: done"]

# mb1-info under QEMU with two modules and a command line: every line, the loader's own
# (loader, mem, mmap, "mod N at") included; mmap lines and module places are checked by shape.
INFO_MODULES = (Module(PC / "mod-a.txt", "arg one"), Module(PC / "mod-b.txt"))
INFO_QEMU = ["mb1-info: the multiboot information",
             "cmdline: mb1-info.elf root=none quiet",
             "loader: qemu",
             "mem: lower 639K upper 129920K",
             "<mmap>",
             "memory map agrees with mem_lower and mem_upper",
             "modules: 2",
             "<mod 0 at>",
             'mod 0: "mod-a.txt arg one", 49 bytes, page-aligned: "alpha module: th"',
             "<mod 1 at>",
             'mod 1: "mod-b.txt", 16 bytes, page-aligned: "beta module, #2."',
             "mb1-info: done"]
INFO_BARE_QEMU = ["mb1-info: the multiboot information",
                  "cmdline: mb1-info.elf ",     # QEMU's -kernel without -append: "NAME "
                  "loader: qemu",
                  "mem: lower 639K upper 129920K",
                  "<mmap>",
                  "memory map agrees with mem_lower and mem_upper",
                  "modules: 0",
                  "mb1-info: done"]

CASES = [
    Case("mb1-hello", "mb1-hello.elf", screen=HELLO, debugcon=["mb1-hello: done"], serial=HELLO,
         attrs={(0, 0): 0x1F, (1, 0): 0x0A, (2, 0): 0x4E, (3, 0): 0x0B, (0, 79): 0x07}),
    Case("mb1-aout", "mb1-aout.bin", screen=AOUT, debugcon=AOUT, attrs={(0, 0): 0x70,
                                                                        (2, 0): 0x0A}),
    Case("mb1-info", "mb1-info.elf", screen=INFO_QEMU, debugcon=INFO_QEMU, serial=INFO_QEMU,
         modules=INFO_MODULES, append="root=none quiet", attrs={(0, 0): 0x1F, (1, 0): 0x07}),
    Case("mb1-info-bare", "mb1-info.elf", debugcon=INFO_BARE_QEMU,
         screen=[line.rstrip(" ") for line in INFO_BARE_QEMU],     # trailing blanks trimmed
         serial=INFO_BARE_QEMU),
    Case("mb1-gccnote", "mb1-gccnote.elf", screen=GCCNOTE, debugcon=GCCNOTE, serial=GCCNOTE,
         attrs={(0, 0): 0x0D}),
    Case("flat0-mb", "flat0-mb.bin", screen=FLAT0, debugcon=FLAT0, attrs={(0, 0): 0x30}),
    Case("mb2-long", "mb2-long.elf", screen=MB2, debugcon=MB2, append="hello from the loader",
         grub=True, attrs={(0, 0): 0x2F, (4, 0): 0x0A}),
]
CASE_IDS = [c.id for c in CASES]

_MMAP = re.compile(r"mmap: 0x[0-9a-f]{9}-0x[0-9a-f]{9} type \d+$")
_MOD_AT = re.compile(r"mod (\d+) at 0x([0-9a-f]{8})-0x([0-9a-f]{8})$")
_LOADER_OWN = re.compile(r"(loader|mem|mmap): |mod \d+ at ")


def matches(lines: list[str], expected: list[str], modules=()) -> None:
    """lines are expected, where "<mmap>" stands for one or more memory-map lines (two of them
    usable: at 0 and at 1 MiB) and "<mod N at>" for module N's place (page-aligned, its size)."""
    got = list(lines)
    i = 0
    for want in expected:
        if want == "<mmap>":
            start = i
            while i < len(got) and _MMAP.match(got[i]):
                i += 1
            block = got[start:i]
            assert block, f"no memory map lines at line {start}: {got}"
            assert any(line.startswith("mmap: 0x000000000-") and line.endswith("type 1")
                       for line in block), block
            assert any(line.startswith("mmap: 0x000100000-") and line.endswith("type 1")
                       for line in block), block
            continue
        assert i < len(got), f"missing line {want!r}: {got}"
        if want.startswith("<mod ") and want.endswith(" at>"):
            m = _MOD_AT.match(got[i])
            assert m and m.group(1) == want.split()[1], (want, got[i])
            start, end = int(m.group(2), 16), int(m.group(3), 16)
            n = int(m.group(1))
            assert start % 4096 == 0 and end - start == modules[n].path.stat().st_size, got[i]
        else:
            assert got[i] == want, f"line {i}: {got[i]!r} != {want!r}\nall: {got}"
        i += 1
    assert i == len(got), f"extra lines: {got[i:]}"


def loader_independent(lines: list[str]) -> list[str]:
    """The lines every loader must agree on: without the loader's own choices (and without the
    placeholders for them in the expectations above)."""
    return [line for line in lines if not _LOADER_OWN.match(line)
            and not (line.startswith("<") and line.endswith(">"))]


def assert_same_shape(vmm_lines: list[str], qemu_lines: list[str]) -> None:
    """vmm's loader lines say what QEMU's say, with its own values: a boot loader name, the
    memory sizes, a memory map, and each module at a page-aligned place of the same size."""
    def own(lines, prefix):
        return [line for line in lines if line.startswith(prefix)]
    for prefix in ("loader: ", "mem: "):
        assert len(own(vmm_lines, prefix)) == len(own(qemu_lines, prefix)), (prefix, vmm_lines)
    assert "loader: (none)" not in vmm_lines and "mem: (none)" not in vmm_lines, vmm_lines
    assert bool(own(vmm_lines, "mmap: ")) == bool(own(qemu_lines, "mmap: ")), vmm_lines
    places = [_MOD_AT.match(line) for line in vmm_lines if line.startswith("mod ")
              and " at 0x" in line]
    qemu_places = [_MOD_AT.match(line) for line in qemu_lines if line.startswith("mod ")
                   and " at 0x" in line]
    assert len(places) == len(qemu_places) and all(places), vmm_lines
    for m, qm in zip(places, qemu_places):
        size = int(m.group(3), 16) - int(m.group(2), 16)
        assert int(m.group(2), 16) % 4096 == 0
        assert size == int(qm.group(3), 16) - int(qm.group(2), 16), (m.group(0), qm.group(0))


def skip_reason(case: Case) -> str | None:
    return GRUB_SKIP if case.grub else QEMU_SKIP


@functools.lru_cache(maxsize=None)
def qemu_result(case_id: str):
    case = CASES[CASE_IDS.index(case_id)]
    return run_qemu(case.path, modules=list(case.modules), append=case.append, timeout=60)


@pytest.fixture(scope="module", autouse=True)
def _built(guests):
    return guests


# ---- the kernels under QEMU --------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_kernel_under_qemu_prints_what_it_is_written_to(case):
    if skip_reason(case):
        pytest.skip(skip_reason(case))
    r = qemu_result(case.id)
    assert r.exit_status == case.status, r
    matches(r.debugcon_lines, case.debugcon, case.modules)
    matches(r.serial_lines, case.serial, case.modules)
    matches(r.screen_rows, case.screen, case.modules)
    for (row, col), attr in case.attrs.items():
        assert r.attr(row, col) == attr, (row, col, hex(r.attr(row, col)))


def test_the_hello_kernel_sends_crlf_on_com1_as_real_kernels_do():
    if QEMU_SKIP:
        pytest.skip(QEMU_SKIP)
    r = qemu_result("mb1-hello")
    assert r.serial == "".join(line + "\r\n" for line in HELLO)
    assert r.debugcon == "mb1-hello: done\n"


def test_flat0_mb_is_flat0_with_a_multiboot_header_in_its_scratch_area(guests):
    # flat0-mb.bin is QEMU's way to load flat0.bin: the two differ only in the 32 header bytes
    # at 0x10 (the guest overwrites them as scratch), so QEMU's output is flat0.bin's.
    plain, mb = (PC / "flat0.bin").read_bytes(), (PC / "flat0-mb.bin").read_bytes()
    assert len(plain) == len(mb)
    assert plain[:0x10] == mb[:0x10] and plain[0x30:] == mb[0x30:]
    assert plain[0x10:0x30] == bytes(32) and mb[0x10:0x14] == (0x1BADB002).to_bytes(4, "little")


def test_without_com1_the_loopback_probe_fails_with_its_status(tmp_path):
    # With `-serial none` QEMU has no COM1 (reads give 0xFF): the kernel must see its probe
    # fail and exit with the documented status, not print into the void.
    if QEMU_SKIP:
        pytest.skip(QEMU_SKIP)
    out = tmp_path / "e9.out"
    proc = subprocess.run([QEMU_I386, "-kernel", str(PC / "mb1-hello.elf"), "-display", "none",
                           "-no-reboot", "-m", "128", "-serial", "none", "-monitor", "none",
                           "-debugcon", f"file:{out}",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                          capture_output=True, timeout=60)
    assert proc.returncode == (0x12 << 1) | 1, proc
    assert out.read_text() == "mb1-hello: COM1 loopback probe failed\n"


# ---- vmm against QEMU --------------------------------------------------------------------------

BACKENDS = test_backends() or ["none"]


@pytest.fixture
def backend(request):
    if request.param == "none":
        pytest.skip("no CPU backend is usable here (neither /dev/kvm nor unicorn)")
    return request.param


@pytest.mark.kvm
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vmm_shows_what_qemu_shows(case, backend, tmp_path):
    # Against the kernel's literal expectations always, and against QEMU's run where QEMU can
    # run (on a host without it, vmm's side is still checked).
    kernel = PC / "flat0.bin" if case.id == "flat0-mb" else case.path
    extra = ("--mode", "protected", "--load", "0", "--entry", "0") if case.id == "flat0-mb" \
        else ()
    v = run_vmm(kernel, backend, modules=list(case.modules), append=case.append,
                workdir=tmp_path, extra_args=extra)
    assert v.exit_status == case.status, v.extra
    for name, expected in (("debugcon_lines", case.debugcon), ("serial_lines", case.serial),
                           ("screen_rows", case.screen)):
        assert loader_independent(getattr(v, name)) == loader_independent(expected), \
            (name, v.extra)
    if skip_reason(case) is None:
        q = qemu_result(case.id)
        assert v.exit_status == q.exit_status, v.extra
        for name in ("debugcon_lines", "serial_lines", "screen_rows"):
            assert loader_independent(getattr(v, name)) == \
                loader_independent(getattr(q, name)), (name, v.extra)
        assert_same_shape(v.debugcon_lines, q.debugcon_lines)


@pytest.mark.kvm
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_vmm_runs_the_16_bit_elf_in_real_mode(backend, tmp_path, guests):
    v = run_vmm(PC / "real16.elf", backend, workdir=tmp_path, board=None, screen=False,
                extra_args=("--mode", "real"))
    assert v.exit_status == OK, v.extra
    assert v.debugcon_lines == REAL16, v.extra


@pytest.mark.kvm
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_the_16_bit_code_of_real16_runs_today_as_a_raw_image(backend, tmp_path, guests):
    # Until vmm starts ELF files in real mode, the same bytes as a raw image at 0x8000 show
    # that the kernel itself is right.
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy (binutils) is not installed")
    raw = tmp_path / "real16.raw"
    subprocess.run(["objcopy", "-O", "binary", str(PC / "real16.elf"), str(raw)], check=True)
    v = run_vmm(raw, backend, workdir=tmp_path, board=None, screen=False,
                extra_args=("--load", "0x8000"))
    assert v.exit_status == OK, v.extra
    assert v.debugcon_lines == REAL16, v.extra


# ---- the harness's own parts (no QEMU needed) --------------------------------------------------

def test_screen_rows_read_a_text_buffer_as_screen_final_prints_it():
    from qemu_reference import screen_rows
    cells = bytearray(b"\x00\x07" * 80 * 25)
    for i, ch in enumerate(b"hi \xdb  "):               # 0xDB: CP437's full block
        cells[i * 2] = ch
    cells[(2 * 80 + 5) * 2] = ord("x")                 # row 2, column 5
    assert screen_rows(bytes(cells)) == ["hi \u2588", "", "     x"]
    assert screen_rows(b"\x00\x07" * 80 * 25) == []


def test_only_a_halt_with_interrupts_off_is_the_kernels_end():
    from qemu_reference import _halted_for_good
    assert _halted_for_good("EIP=0010003a EFL=00000006 [-----P-] CPL=0 II=0 A20=1 SMM=0 HLT=1")
    assert _halted_for_good("RIP=000000000010003a RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 "
                            "SMM=0 HLT=1")
    # SeaBIOS and GRUB wait for interrupts with `sti; hlt`: not the end
    assert not _halted_for_good("EIP=0000e0b5 EFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 "
                                "HLT=1")
    assert not _halted_for_good("EIP=0010003a EFL=00000006 [-----P-] CPL=0 II=0 A20=1 SMM=0 "
                                "HLT=0")


@pytest.mark.parametrize("kernel, version", [
    ("mb1-hello.elf", 1), ("mb1-aout.bin", 1), ("mb1-info.elf", 1), ("mb1-gccnote.elf", 1),
    ("flat0-mb.bin", 1), ("mb2-long.elf", 2), ("flat0.bin", None), ("real16.elf", None)])
def test_the_kernels_carry_the_multiboot_header_they_are_meant_to(kernel, version):
    from qemu_reference import multiboot_version
    assert multiboot_version(PC / kernel) == version


def test_gccnote_keeps_the_note_segment_of_gccs_default_link():
    # What the kernel exists for: a PT_LOAD far above the rest, holding the build-id note.
    import struct
    data = (PC / "mb1-gccnote.elf").read_bytes()
    phoff, = struct.unpack_from("<I", data, 28)
    phentsize, phnum = struct.unpack_from("<HH", data, 42)
    loads = [struct.unpack_from("<IIIIII", data, phoff + i * phentsize)
             for i in range(phnum)]
    paddrs = [p[3] for p in loads if p[0] == 1]          # PT_LOAD: p_paddr
    notes = [p for p in loads if p[0] == 4]              # PT_NOTE
    assert min(paddrs) < 0x200000 and max(paddrs) >= 0x08048000, [hex(a) for a in paddrs]
    assert notes and notes[0][3] >= 0x08048000
