"""The port bus: maps port ranges to devices and hands each access an offset, not a port."""

from __future__ import annotations


class Device:
    """A port-I/O device. `read`/`write` get the offset into the device's range and the access
    size in bytes (1, 2 or 4); string I/O arrives one element at a time."""

    name = "device"

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        pass

    def write_bytes(self, offset: int, data: bytes) -> None:
        """A byte-wide write of each byte of `data`, in order: a string OUT, or OUTs the CPU
        backend batched (coalesced PIO). Devices may override it with a faster equivalent."""
        for byte in data:
            self.write(offset, 1, byte)

    def finish(self) -> None:
        """Called once when the run ends (flush partial output)."""

    def stats(self) -> dict:
        return {}

    # Plain values a state record may hold (vm-superio style: the record is data, no objects).
    _STATE_TYPES = (bool, int, str, bytes, type(None))

    def state(self) -> dict:
        """The device's state as a plain record: its fields of plain types (bytes-like and
        deque fields as bytes or lists; private ones too, which a snapshot needs), for
        snapshots, `monitor devices` and reports. References to other objects (the input
        source, sinks) are not state and are left out."""
        out = {}
        for name, value in vars(self).items():
            if isinstance(value, self._STATE_TYPES):
                out[name] = value
            elif isinstance(value, (bytearray, memoryview)):
                out[name] = bytes(value)
            elif isinstance(value, Device):         # a part of this device (COM1's line output)
                out[name] = value.state()
            elif isinstance(value, dict):
                if all(isinstance(v, self._STATE_TYPES) for v in value.values()):
                    out[name] = dict(value)
            elif isinstance(value, (list, tuple)) or type(value).__name__ == "deque":
                if all(isinstance(v, self._STATE_TYPES) for v in value):
                    out[name] = list(value)
        return out

    def from_state(self, state: dict) -> None:
        """Restore what state() returned (fields keep their container types)."""
        for name, value in state.items():
            current = getattr(self, name, None)
            if isinstance(current, Device):
                current.from_state(value)
            elif isinstance(current, bytearray):
                current[:] = value
            elif type(current).__name__ == "deque":
                current.clear()
                current.extend(value)
            elif isinstance(current, list):
                current[:] = value
            elif isinstance(current, dict):
                current.clear()
                current.update(value)
            else:
                setattr(self, name, value)


class PortConflict(ValueError):
    """Two devices claimed the same port."""


class PortBus:
    def __init__(self):
        self._ports: dict[int, tuple[Device, int]] = {}
        self.devices: list[tuple[int, int, Device]] = []

    def register(self, device: Device, base: int, length: int = 1) -> None:
        if not (0 <= base and base + length <= 0x10000 and length > 0):
            raise ValueError(f"port range {base:#x}+{length} is outside 0x0-0xffff")
        for port in range(base, base + length):
            if port in self._ports:
                other = self._ports[port][0]
                raise PortConflict(f"{device.name} at {base:#x}-{base + length - 1:#x} overlaps "
                                   f"{other.name} at port {port:#x}")
        for offset in range(length):
            self._ports[base + offset] = (device, offset)
        self.devices.append((base, length, device))

    def lookup(self, port: int) -> tuple[Device, int] | None:
        return self._ports.get(port)

    def describe(self) -> list[dict]:
        return [{"name": d.name, "port": base, "length": length}
                for base, length, d in sorted(self.devices, key=lambda t: t[0])]
