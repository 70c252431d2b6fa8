"""The lossy file system served through FUSE (pyfuse3, on trio), as a process of its own.

The process mounts `LossyTree` over MOUNTPOINT and listens on a control socket for one-line
commands: `status` (what a cut would drop, as JSON), `sync` (make everything durable), `cut`
(drop it all, as a power loss; it answers what was dropped, then stops serving and unmounts).
SIGUSR1 cuts too; SIGTERM and SIGINT unmount cleanly, which syncs first as an orderly shutdown
does. The kernel's writeback cache is off and `direct_io` is not used (LIBRARIES.md): every
write reaches the tree when it is made, and SQLite's shared mappings still work.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import stat
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

import orjson
import pyfuse3
import trio

from ...logs import get_logger
from .tree import LossyTree, Node

log = get_logger("lossyfs")

TIMEOUT_S = 1.0  # how long the kernel may cache names and attributes (we are its only writer)


def _attrs(node: Node) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = node.ino
    entry.generation = 0
    entry.entry_timeout = TIMEOUT_S
    entry.attr_timeout = TIMEOUT_S
    entry.st_mode = node.mode
    entry.st_nlink = max(node.nlink, 0)
    entry.st_uid = node.uid
    entry.st_gid = node.gid
    entry.st_rdev = node.rdev
    entry.st_size = node.size if node.is_file else len(node.target)
    entry.st_blksize = 4096
    entry.st_blocks = (entry.st_size + 511) // 512
    entry.st_atime_ns = node.atime_ns
    entry.st_mtime_ns = node.mtime_ns
    entry.st_ctime_ns = node.ctime_ns
    return entry


def _fuse_errors(fn):  # type: ignore[no-untyped-def]
    """Answer an OSError from the tree with its errno, as the kernel expects; after a cut,
    answer everything with EIO (the disk is gone: nothing may reach the backing folder); count
    an unexpected error as a bug, which the cut's answer reports."""

    async def wrapper(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.tree.dead:
            raise pyfuse3.FUSEError(errno.EIO)
        try:
            return fn(self, *args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            self.bugs += 1
            log.error("lossyfs.bug", operation=fn.__name__, exc_info=True, next="answered EIO")
            raise pyfuse3.FUSEError(errno.EIO) from None

    wrapper.__name__ = fn.__name__
    return wrapper


class LossyOperations(pyfuse3.Operations):
    """pyfuse3's operations, each a thin call into the tree."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, tree: LossyTree) -> None:
        super().__init__()
        self.tree = tree
        self.bugs = 0
        self._handles: dict[int, int] = {}
        self._dirs: dict[int, int] = {}
        self._next_fh = 1

    def _fh(self, table: dict[int, int], ino: int) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        table[fh] = ino
        return fh

    @_fuse_errors
    def lookup(self, parent_inode, name, ctx):  # type: ignore[no-untyped-def]
        return _attrs(self.tree.lookup(parent_inode, name))

    @_fuse_errors
    def getattr(self, inode, ctx=None):  # type: ignore[no-untyped-def]
        return _attrs(self.tree.node(inode))

    @_fuse_errors
    def setattr(self, inode, attr, fields, fh, ctx):  # type: ignore[no-untyped-def]
        tree = self.tree
        if fields.update_size:
            tree.truncate(inode, attr.st_size)
        tree.set_attrs(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return _attrs(tree.node(inode))

    @_fuse_errors
    def readlink(self, inode, ctx):  # type: ignore[no-untyped-def]
        node = self.tree.node(inode)
        if not stat.S_ISLNK(node.mode):
            raise OSError(errno.EINVAL, "not a symlink")
        return node.target

    @_fuse_errors
    def mknod(self, parent_inode, name, mode, rdev, ctx):  # type: ignore[no-untyped-def]
        return _attrs(self.tree.make(parent_inode, name, mode, ctx.uid, ctx.gid, rdev))

    @_fuse_errors
    def mkdir(self, parent_inode, name, mode, ctx):  # type: ignore[no-untyped-def]
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
        return _attrs(self.tree.make(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_fuse_errors
    def symlink(self, parent_inode, name, target, ctx):  # type: ignore[no-untyped-def]
        node = self.tree.make(parent_inode, name, stat.S_IFLNK | 0o777, ctx.uid, ctx.gid)
        node.target = target
        return _attrs(node)

    @_fuse_errors
    def link(self, inode, new_parent_inode, new_name, ctx):  # type: ignore[no-untyped-def]
        return _attrs(self.tree.link(inode, new_parent_inode, new_name))

    @_fuse_errors
    def unlink(self, parent_inode, name, ctx):  # type: ignore[no-untyped-def]
        self.tree.unlink(parent_inode, name)

    @_fuse_errors
    def rmdir(self, parent_inode, name, ctx):  # type: ignore[no-untyped-def]
        self.tree.rmdir(parent_inode, name)

    @_fuse_errors
    def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):  # type: ignore[no-untyped-def]
        self.tree.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_fuse_errors
    def create(self, parent_inode, name, mode, flags, ctx):  # type: ignore[no-untyped-def]
        mode = stat.S_IFREG | stat.S_IMODE(mode)
        node = self.tree.make(parent_inode, name, mode, ctx.uid, ctx.gid)
        self.tree.open(node.ino)
        return pyfuse3.FileInfo(fh=self._fh(self._handles, node.ino)), _attrs(node)

    @_fuse_errors
    def open(self, inode, flags, ctx):  # type: ignore[no-untyped-def]
        self.tree.open(inode)
        if flags & os.O_TRUNC:  # libfuse asks the kernel for atomic O_TRUNC: it is ours to do
            self.tree.truncate(inode, 0)
        return pyfuse3.FileInfo(fh=self._fh(self._handles, inode))

    @_fuse_errors
    def read(self, fh, off, size):  # type: ignore[no-untyped-def]
        return self.tree.read(self._handles[fh], off, size)

    @_fuse_errors
    def write(self, fh, off, buf):  # type: ignore[no-untyped-def]
        return self.tree.write(self._handles[fh], off, buf)

    @_fuse_errors
    def flush(self, fh):  # type: ignore[no-untyped-def]
        return None

    @_fuse_errors
    def release(self, fh):  # type: ignore[no-untyped-def]
        self.tree.release(self._handles.pop(fh))

    @_fuse_errors
    def fsync(self, fh, datasync):  # type: ignore[no-untyped-def]
        self.tree.fsync(self._handles[fh])

    @_fuse_errors
    def opendir(self, inode, ctx):  # type: ignore[no-untyped-def]
        self.tree.folder(inode)
        return self._fh(self._dirs, inode)

    async def readdir(self, fh, start_id, token):  # type: ignore[no-untyped-def]
        if self.tree.dead:
            raise pyfuse3.FUSEError(errno.EIO)
        try:
            listing = self.tree.listing(self._dirs[fh])
        except (OSError, KeyError) as exc:
            raise pyfuse3.FUSEError(getattr(exc, "errno", None) or errno.EBADF) from None
        for cookie, name, node in listing:
            if cookie > start_id and not pyfuse3.readdir_reply(token, name, _attrs(node), cookie):
                break

    @_fuse_errors
    def releasedir(self, fh):  # type: ignore[no-untyped-def]
        self._dirs.pop(fh, None)

    @_fuse_errors
    def fsyncdir(self, fh, datasync):  # type: ignore[no-untyped-def]
        self.tree.fsyncdir(self._dirs[fh])

    @_fuse_errors
    def statfs(self, ctx):  # type: ignore[no-untyped-def]
        st = os.statvfs(self.tree.backing)
        out = pyfuse3.StatvfsData()
        for name in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
            "f_namemax",
        ):
            setattr(out, name, getattr(st, name))
        return out

    @_fuse_errors
    def access(self, inode, mode, ctx):  # type: ignore[no-untyped-def]
        self.tree.node(inode)
        return True

    @_fuse_errors
    def forget(self, inode_list):  # type: ignore[no-untyped-def]
        return None


def unmount(mountpoint: Path) -> None:
    """Detach a mount (lazily, so a process still inside it cannot hold it); quiet when there
    is none."""
    for cmd in (["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        done = subprocess.run(cmd, capture_output=True, check=False)
        if done.returncode == 0 or not os.path.ismount(mountpoint):
            return


class Server:
    """One mount: the tree, its FUSE session, its control socket and its signals."""

    def __init__(self, tree: LossyTree, mountpoint: Path, control: Path) -> None:
        self.tree = tree
        self.mountpoint = mountpoint
        self.control = control
        self.cut_done = False
        self.clean_stop = False
        self.operations: LossyOperations | None = None

    def run(self) -> str:
        """Serve until a cut or an unmount; returns `cut` or `unmounted`."""
        self.tree.load()
        unmount(self.mountpoint)  # a mount left by a process that died answers ENOTCONN
        self.operations = LossyOperations(self.tree)
        options = set(pyfuse3.default_options)
        options |= {"fsname=lossyfs", "subtype=lossyfs"}
        pyfuse3.init(self.operations, str(self.mountpoint), options)
        log.info(
            "lossyfs.mounted",
            mountpoint=str(self.mountpoint),
            backing=str(self.tree.backing),
            control=str(self.control),
            torn=self.tree.torn,
        )
        try:
            trio.run(self._main)
            clean = not self.cut_done  # a signal or an unmount from outside, not an error
        finally:
            # Only an orderly stop syncs: a file system that failed must not make durable
            # what a power cut would have dropped (and the laboratory sees it died).
            if self.clean_stop and not self.cut_done:
                self.tree.sync()
            pyfuse3.close(unmount=False)
            unmount(self.mountpoint)
            with contextlib.suppress(FileNotFoundError):
                self.control.unlink()
        if clean:
            log.info("lossyfs.unmounted", mountpoint=str(self.mountpoint), synced=True)
        return "cut" if self.cut_done else "unmounted"

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals, nursery.cancel_scope)
            nursery.start_soon(self._control, nursery.cancel_scope)
            await pyfuse3.main()
            self.clean_stop = not self.cut_done
            nursery.cancel_scope.cancel()

    def _cut(self) -> dict:
        loss = self.tree.cut()
        self.cut_done = True
        log.warning(
            "lossyfs.cut",
            mountpoint=str(self.mountpoint),
            files=loss.files,
            dropped_bytes=loss.bytes,
            directories=loss.directories,
            entries=loss.entries,
            torn=loss.torn,
            next="stopped serving; mount again to see what survived",
        )
        return asdict(loss)

    def _bugs(self) -> int:
        return self.operations.bugs if self.operations is not None else 0

    def _stop(self, scope: trio.CancelScope) -> None:
        pyfuse3.terminate()
        scope.cancel()

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    self._cut()
                else:
                    self.clean_stop = True
                self._stop(scope)
                return

    async def _control(self, scope: trio.CancelScope) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.control.unlink()
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await listener.bind(str(self.control))
        listener.listen(4)
        while True:
            conn, _ = await listener.accept()
            stream = trio.SocketStream(conn)
            try:
                data = b""
                while not data.endswith(b"\n") and len(data) < 256:
                    chunk = await stream.receive_some(256)
                    if not chunk:
                        break
                    data += chunk
                answer = self._answer(data.strip().decode(errors="replace"), scope)
                await stream.send_all(orjson.dumps(answer) + b"\n")
            except (OSError, trio.BrokenResourceError) as exc:
                log.warning("lossyfs.control_failed", error=str(exc), next="serving on")
            finally:
                await stream.aclose()
            if self.cut_done:
                self._stop(scope)
                return

    def _answer(self, command: str, scope: trio.CancelScope) -> dict:
        if command == "cut":
            return {"ok": True, "cut": self._cut()}
        if command == "sync":
            self.tree.sync()
            return {"ok": True}
        if command == "status":
            return {"ok": True, "pending": asdict(self.tree.pending()), "bugs": self._bugs()}
        return {"ok": False, "error": f"unknown command {command!r} (cut, sync, status)"}


def default_control(backing: Path) -> Path:
    """The control socket when none is named: a short name in the temporary folder derived
    from the backing folder's real path (a Unix socket's path is limited to 107 bytes, which a
    backing folder deep in a test run's tree would pass), so `lossyctl BACKING` finds it."""
    digest = hashlib.sha256(os.fsencode(Path(backing).resolve())).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"aoscore-lossyfs-{digest}.sock"


def serve(backing: Path, mountpoint: Path, control: Path | None, *, torn: bool, seed: int) -> str:
    """Mount, serve until a cut or an unmount; `cut` or `unmounted`."""
    tree = LossyTree(backing, torn=torn, seed=seed)
    sock = control or default_control(Path(backing))
    return Server(tree, Path(mountpoint), sock).run()
