"""Boards (vmm.boards): the device tables, choosing one with --board, and the board in traces."""

from __future__ import annotations

import json
import struct

import pytest

from conftest import records_without_info, test_backends, vmm_command  # noqa: F401
from vmm.boards import BOARDS, BoardContext, get_board
from vmm.boot import BootOptions, build_boot_image, detect_protocol
from vmm.devices import PortBus
from vmm.errors import UsageError

# Real mode at 0x1000: print "A\n" on the debug console (0xe9), then HLT.
DEBUGCON_HELLO = bytes([0xB0, 0x41, 0xE6, 0xE9, 0xB0, 0x0A, 0xE6, 0xE9, 0xF4])
# The same on the p3 console (0x42), which the pc board does not have (PIT channel 2 there).
CONSOLE_HELLO = bytes([0xB0, 0x41, 0xE6, 0x42, 0xB0, 0x0A, 0xE6, 0x42, 0xF4])


def bus_of(board) -> PortBus:
    bus = PortBus()
    from vmm.inputs import LiveInput, NullFeed, VirtualClock
    inputs = LiveInput(NullFeed(), VirtualClock())
    for slot, device in board.build(BoardContext(inputs=inputs, output=lambda *a: None)):
        bus.register(device, slot.port, slot.count)
    return bus


def test_p3_is_the_seeds_device_set_at_its_documented_ports():
    ports = {(d["name"], d["port"], d["length"]) for d in bus_of(BOARDS["p3"]).describe()}
    assert {("console", 0x42, 1), ("keyboard", 0x44, 2), ("timer", 0x46, 2),
            ("debugcon", 0xE9, 1), ("serial", 0xF1, 1), ("exit", 0xF4, 1),
            ("com1", 0x3F8, 8), ("headline", 0x100, 1),
            ("pic-master", 0x20, 2), ("pic-slave", 0xA0, 2)} <= ports
    assert len(ports) == 10 + 12               # and the 6 weather and 6 air-quality ports
    assert BOARDS["p3"].default_mem == 16 << 20 and BOARDS["p3"].screen is None
    # the optional PIC: it takes part once the guest initialises it (docs/devices.md)
    assert BOARDS["p3"].controller == "pic-master" and BOARDS["p3"].controller_on_init
    assert not BOARDS["pc"].controller_on_init


def test_pc_has_no_p3_ports_and_a_text_screen():
    used = {port for _, port, length in
            ((d["name"], d["port"], d["length"]) for d in bus_of(BOARDS["pc"]).describe())
            for port in range(port, port + length)}
    assert not used & {0x42, 0x44, 0x45, 0x46, 0x47} - {0x42}   # the p3 ports: 0x42 is
    assert {0x20, 0x21, 0xA0, 0xA1, 0x40, 0x41, 0x42, 0x43, 0x61} <= used   # PIT channel 2
    assert {0xE9, 0xF4, 0x3F8, 0x2F8, 0x3D4, 0x3D5, 0x3DA} <= used
    assert BOARDS["pc"].default_mem == 128 << 20
    assert BOARDS["pc"].screen == (0xB8000, 4000)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_board_registers_without_port_conflicts_and_names_its_devices_once(name):
    devices = bus_of(BOARDS[name]).describe()
    names = [d["name"] for d in devices]
    assert len(names) == len(set(names))


def test_unknown_board_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown board 'isa'.*p3, pc"):
        get_board("isa")


def multiboot1(flags: int = 0) -> bytes:
    magic = 0x1BADB002
    return struct.pack("<III", magic, flags, (-(magic + flags)) & 0xFFFFFFFF)


def multiboot2() -> bytes:
    magic, arch, length = 0xE85250D6, 0, 24
    return struct.pack("<IIII", magic, arch, length,
                       (-(magic + arch + length)) & 0xFFFFFFFF) + struct.pack("<HHI", 0, 0, 8)


@pytest.mark.parametrize("data, protocol", [
    (bytes(64) + multiboot1(), "multiboot1"),
    (bytes(8) + multiboot2(), "multiboot2"),
    (bytes(2) + multiboot1(), None),                      # not 4-byte aligned
    (bytes(8 << 10) + multiboot1(), None),                # beyond the first 8 KiB
    (bytes(64) + multiboot1()[:8] + b"\0\0\0\0", None),   # bad checksum
    (bytes(4) + multiboot2(), None),                      # multiboot2 wants 8-byte alignment
    (DEBUGCON_HELLO, None),
])
def test_multiboot_headers_are_detected_only_where_the_specs_put_them(data, protocol):
    assert detect_protocol(data) == protocol


def test_the_board_and_its_ram_are_resolved_when_the_image_is_built():
    plain = build_boot_image("hello.bin", DEBUGCON_HELLO, BootOptions())
    assert (plain.board, plain.mem_size) == ("p3", 16 << 20)
    assert plain.options.board == "p3" and plain.options.mem == 16 << 20
    pc = build_boot_image("hello.bin", DEBUGCON_HELLO, BootOptions(board="pc"))
    assert (pc.board, pc.mem_size) == ("pc", 128 << 20)
    small = build_boot_image("hello.bin", DEBUGCON_HELLO, BootOptions(board="pc", mem=1 << 20))
    assert small.mem_size == 1 << 20


@pytest.mark.parametrize("backend", test_backends())
def test_a_guest_runs_on_either_board_through_the_ports_both_have(vmm, tmp_path, backend):
    guest = tmp_path / "hello.bin"
    guest.write_bytes(DEBUGCON_HELLO)
    for board in ("p3", "pc"):
        r = vmm("run", guest, "--board", board, "--backend", backend)
        assert r.returncode == 0 and r.lines == ["A"], (board, r)


@pytest.mark.parametrize("backend", test_backends())
def test_the_pc_board_has_no_p3_console(vmm, tmp_path, backend):
    guest = tmp_path / "console.bin"
    guest.write_bytes(CONSOLE_HELLO)
    assert vmm("run", guest, "--backend", backend).lines == ["A"]
    r = vmm("run", guest, "--board", "pc", "--backend", backend)
    assert r.returncode == 0 and r.lines == [], r        # 0x42 is PIT channel 2 on a PC
    keyboard = tmp_path / "keyboard.bin"
    keyboard.write_bytes(bytes([0xE4, 0x45, 0xF4]))      # in al, 0x45: the p3 keyboard status
    r = vmm("run", keyboard, "--board", "pc", "--backend", backend)
    assert r.returncode == 26 and "unknown port 0x45" in r.stderr, r


def test_a_wrong_board_is_one_line_and_exit_2(vmm, tmp_path):
    guest = tmp_path / "hello.bin"
    guest.write_bytes(DEBUGCON_HELLO)
    r = vmm("run", guest, "--board", "isa")
    assert r.returncode == 2, r
    assert r.stderr.strip().splitlines() == [
        "vmm: error: unknown board 'isa': choose one of p3, pc (docs/devices.md)"], r.stderr


@pytest.mark.parametrize("backend", test_backends())
def test_the_board_is_recorded_and_replay_rebuilds_it(vmm, tmp_path, backend):
    guest = tmp_path / "hello.bin"
    guest.write_bytes(DEBUGCON_HELLO)
    trace = tmp_path / "pc.trace"
    r = vmm("record", guest, "--board", "pc", "--backend", backend, "-o", trace)
    assert r.returncode == 0, r
    header = records_without_info(trace)[0]
    assert header["version"] >= 4                   # boards came in version 4
    assert header["machine"]["board"] == "pc"
    assert header["machine"]["boot"]["board"] == "pc"
    assert header["machine"]["mem"] == 128 << 20
    assert {d["port"] for d in header["machine"]["devices"]}.isdisjoint({0x42, 0x44, 0x46})
    r = vmm("replay", trace, "--backend", backend)
    assert r.returncode == 0 and r.lines == ["A"], r
    assert "pc board" in vmm("inspect", trace).stdout


def test_a_trace_naming_an_unknown_board_is_a_bad_trace(vmm, tmp_path):
    guest = tmp_path / "hello.bin"
    guest.write_bytes(DEBUGCON_HELLO)
    trace = tmp_path / "t.trace"
    assert vmm("record", guest, "-o", trace).returncode == 0
    lines = trace.read_text().splitlines()
    header = json.loads(lines[0])
    header["machine"]["board"] = ["pc"]
    trace.write_text("\n".join([json.dumps(header)] + lines[1:]) + "\n")
    r = vmm("replay", trace)
    assert r.returncode == 14, r
    assert "board" in r.stderr and "Traceback" not in r.stderr


def test_rubric_and_vmm_toml_take_a_board(tmp_path):
    from harness.rubric import load_rubric
    rubric = tmp_path / "r.toml"
    rubric.write_text('title = "t"\n[boot]\nboard = "pc"\n[[scenario]]\nname = "s"\n'
                      'points = 1\nscript = "idle"\n[[scenario.check]]\ncontains = "x"\n')
    assert load_rubric(str(rubric)).boot.board == "pc"
    rubric.write_text(rubric.read_text().replace('"pc"', '"isa"'))
    with pytest.raises(UsageError, match="boot.board: expected one of p3, pc, got 'isa'"):
        load_rubric(str(rubric))


@pytest.mark.parametrize("code, status, reason", [
    # mov dx, 0x604; mov ax, 0x2000; out dx, ax; hlt: QEMU's ACPI soft power-off
    (bytes([0xBA, 0x04, 0x06, 0xB8, 0x00, 0x20, 0xEF, 0xF4]), 0, "shutdown"),
    # mov dx, 0xb004; ...: the older QEMU/Bochs PM port
    (bytes([0xBA, 0x04, 0xB0, 0xB8, 0x00, 0x20, 0xEF, 0xF4]), 0, "shutdown"),
    # mov dx, 0x501; mov al, 0x31; out dx, al; hlt: isa-debug-exit at QEMU's default base
    (bytes([0xBA, 0x01, 0x05, 0xB0, 0x31, 0xEE, 0xF4]), 99, "exit-device"),
    # mov al, 0x18; out 0xf4, al; hlt: isa-debug-exit at 0xf4
    (bytes([0xB0, 0x18, 0xE6, 0xF4, 0xF4]), 49, "exit-device"),
])
def test_the_pc_boards_exit_and_shutdown_ports_end_the_run(vmm, tmp_path, code, status, reason):
    guest = tmp_path / "exit.bin"
    guest.write_bytes(code)
    r = vmm("record", guest, "--board", "pc", "-o", tmp_path / "t.trace")
    assert r.returncode == status, r
    assert records_without_info(tmp_path / "t.trace")[-1]["reason"] == reason


def test_bochs_shutdown_string_and_com2_and_post_codes_on_pc(vmm, tmp_path):
    # mov dx, 0x2f8; "B\n" to COM2; out 0x80 twice; "Shutdown" to 0x8900 with rep outsb
    text = b"Shutdown"
    code = bytes([0xBA, 0xF8, 0x02, 0xB0, 0x42, 0xEE, 0xB0, 0x0A, 0xEE,
                  0xB0, 0x12, 0xE6, 0x80, 0xB0, 0x34, 0xE6, 0x80,
                  0xBE]) + (0x1000 + 29).to_bytes(2, "little") + bytes([
                  0xB9, len(text), 0x00, 0xBA, 0x00, 0x89, 0xF3, 0x6E, 0xF4])
    assert len(code) == 29
    guest = tmp_path / "bochs.bin"
    guest.write_bytes(code + text)
    trace = tmp_path / "t.trace"
    r = vmm("record", guest, "--board", "pc", "-o", trace)
    assert r.returncode == 0 and r.lines == ["B"], r
    records = records_without_info(trace)
    assert records[-1]["reason"] == "shutdown"
    assert {"type": "out", "n": 0, "dev": "com2", "text": "B"} in records
