"""What runs inside the build sandbox: unpack the submission, build it, hand back the guest.

harness.sandbox starts this file's source with the sandbox's own Python (`python3 -I -S -c`),
as the sandbox's unprivileged user, in a private /tmp that is the only writable place. It:

1. unpacks the tar stream on stdin into /tmp/build: regular files and directories only (no
   links, devices or FIFOs), no absolute paths or `..`, at most `max_files` members, each at
   most `max_file_size` bytes and all together at most `max_total` (sparse members count at
   their apparent size). It writes through directory file descriptors with O_NOFOLLOW and
   O_EXCL, so it never relies on tarfile's extraction filters (which Python 3.11.0-3.11.3 lack
   and which CVE-2025-4517 defeated);
2. runs the build command there, its output going to stdout (the grader keeps it as the log);
3. opens the guest the build made with O_NOFOLLOW (a symbolic link is refused), checks that it
   is a regular file no larger than the guest's RAM, and writes a JSON line and the guest's
   bytes to the result descriptor.

It uses the standard library only and runs on any Python 3.8+, since the sandbox's Python is
the host's /usr/bin/python3, not necessarily the grader's.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import tarfile

BUILD_DIR = "/tmp/build"
CHUNK = 1 << 16
MAX_NAME_BYTES = 4096                  # a member's whole path (PATH_MAX)
MAX_COMPONENT_BYTES = 255              # one path component (NAME_MAX)
MAKEFILES = ("GNUmakefile", "makefile", "Makefile")


class Refused(Exception):
    """The submission cannot be unpacked or built, for the reason given (one line)."""


def components(name):
    """A member name as a list of path components, or Refused."""
    shown = name[:80] + ("..." if len(name) > 80 else "")
    if "\0" in name:
        raise Refused("a file name contains a NUL byte")
    if name.startswith("/"):
        raise Refused("%r is an absolute path" % shown)
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise Refused("a file name is longer than %d bytes" % MAX_NAME_BYTES)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    for part in parts:
        if part == "..":
            raise Refused("%r leads out of the submission (..)" % shown)
        if len(part.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
            raise Refused("a file name component is longer than %d bytes" % MAX_COMPONENT_BYTES)
    return parts


def _open_dir(root_fd, parts):
    """A descriptor of directory root/parts..., created as needed, never through a link."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            new = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = new
        return fd
    except OSError:
        os.close(fd)
        raise


def unpack(stream, root, max_files, max_file_size, max_total):
    """Unpack the tar stream (any compression tarfile knows) into the directory `root`."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    count = total = 0
    seen = set()
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|*")
        except tarfile.ReadError as e:
            raise Refused("not a tar archive (%s)" % e)
        for member in tar:
            count += 1
            if count > max_files:
                raise Refused("it has more than %d files" % max_files)
            parts = components(member.name)
            if not parts:
                continue                                   # "." itself
            path = "/".join(parts)
            if member.isdir():
                os.close(_open_dir(root_fd, parts))
                continue
            if member.issym() or member.islnk():
                raise Refused("%r is a link: links are not accepted" % path[:80])
            if not member.isreg():
                raise Refused("%r is a device or FIFO: only files and directories are "
                              "accepted" % path[:80])
            if member.size > max_file_size:
                raise Refused("%r is %d bytes, over the limit of %d per file"
                              % (path[:80], member.size, max_file_size))
            total += member.size
            if total > max_total:
                raise Refused("its files add up to more than %d bytes" % max_total)
            if path in seen:
                raise Refused("%r appears twice" % path[:80])
            seen.add(path)
            parent = _open_dir(root_fd, parts[:-1])
            try:
                mode = 0o755 if member.mode & 0o111 else 0o644
                fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             mode, dir_fd=parent)
            finally:
                os.close(parent)
            with os.fdopen(fd, "wb") as out:
                data = tar.extractfile(member)
                left = member.size
                while left > 0:
                    chunk = data.read(min(CHUNK, left))
                    if not chunk:
                        raise Refused("the archive ends inside %r" % path[:80])
                    out.write(chunk)
                    left -= len(chunk)
    except (tarfile.TarError, EOFError) as e:
        raise Refused("the archive is damaged (%s)" % e)
    except UnicodeError:
        raise Refused("a file name is not valid text")
    except MemoryError:
        raise Refused("unpacking it ran out of memory")
    except OSError as e:
        if e.errno == 28:                                  # ENOSPC
            raise Refused("its files do not fit in the sandbox's disk space")
        raise Refused("cannot unpack it: %s" % (e.strerror or e))
    finally:
        os.close(root_fd)


def work_directory(root):
    """The directory to build in: `root`, or its only entry when that is a directory."""
    entries = os.listdir(root)
    if len(entries) == 1:
        only = os.path.join(root, entries[0])
        st = os.lstat(only)
        if stat.S_ISDIR(st.st_mode):
            return only
    return root


def take_guest(path, cap):
    """(bytes, "") of the built guest, or (None, why not)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == 40:                                  # ELOOP: the last component is a link
            return None, "a symbolic link, not a file"
        if e.errno == 2:
            return None, "missing"
        return None, "unreadable (%s)" % e.strerror
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None, "not a regular file"
        if st.st_size > cap:
            return None, "%d bytes, larger than the guest's RAM (%d bytes)" % (st.st_size, cap)
        chunks, left = [], cap + 1
        while left > 0:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > cap:
            return None, "larger than the guest's RAM (%d bytes)" % cap
        return data, ""
    finally:
        os.close(fd)


SETTINGS_FILE = "vmm.toml"
MAX_SETTINGS = 16 << 10


def read_settings(work):
    """The submission's vmm.toml (its boot settings) as text, read before the build can change
    it; None when there is none; a dict with a problem when it is not a small regular file."""
    data, why = take_guest(os.path.join(work, SETTINGS_FILE), MAX_SETTINGS)
    if data is None:
        return None if why == "missing" else {"problem": "vmm.toml is %s" % why}
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"problem": "vmm.toml is not UTF-8 text"}


def _not_dumpable():
    """Keep the build (same uid) out of this process: no ptrace, no /proc/<pid>/fd."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)             # PR_SET_DUMPABLE, 0
    except Exception:
        pass


def main():
    config = json.loads(sys.argv[1])
    result = os.fdopen(config["result_fd"], "wb")
    _not_dumpable()

    settings = None

    def finish(**fields):
        data = fields.pop("guest", None)
        fields["settings"] = settings
        fields["size"] = len(data) if data is not None else None
        result.write(json.dumps(fields).encode() + b"\n")
        if data is not None:
            result.write(data)
        result.flush()
        sys.exit(0)

    os.mkdir(BUILD_DIR, 0o755)
    try:
        unpack(sys.stdin.buffer, BUILD_DIR, config["max_files"], config["max_file_size"],
               config["max_total"])
    except Refused as e:
        finish(stage="unpack", problem="cannot unpack the submission: %s" % e,
               limit=_unpack_limit(str(e)))
    sys.stdin.close()
    os.close(0)
    work = work_directory(BUILD_DIR)
    settings = read_settings(work)
    command = config["command"]
    if os.path.basename(command[0]) == "make" and \
            not any(os.path.isfile(os.path.join(work, m)) for m in MAKEFILES):
        finish(stage="build", problem="the submission has no Makefile")
    sys.stdout.buffer.write(("$ %s\n" % " ".join(command)).encode())
    sys.stdout.flush()
    try:
        status = subprocess.call(command, cwd=work, stdin=subprocess.DEVNULL, close_fds=True)
    except OSError as e:
        finish(stage="build", problem="cannot run %s: %s" % (command[0], e.strerror))
    disk = os.statvfs("/tmp")
    disk_full = disk.f_bavail * disk.f_frsize < CHUNK
    if status != 0:
        finish(stage="build", status=status, disk_full=disk_full,
               signal=signal.Signals(-status).name if status < 0 and -status in
               signal.valid_signals() else None)
    guest, why = take_guest(os.path.join(work, config["guest"]), config["guest_cap"])
    if guest is None:
        finish(stage="guest", status=0, disk_full=disk_full,
               problem="the build did not produce %s" % config["guest"] if why == "missing"
               else "the build's %s is %s" % (config["guest"], why))
    finish(stage="done", status=0, guest=guest)


def _unpack_limit(reason):
    if "more than" in reason and "files" in reason:
        return "files"
    if "per file" in reason:
        return "file-size"
    if "add up to more" in reason or "disk space" in reason:
        return "disk"
    if "memory" in reason:
        return "memory"
    return None


if __name__ == "__main__":
    main()
