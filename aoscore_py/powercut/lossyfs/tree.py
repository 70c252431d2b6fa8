"""The lossy file system's model: a file tree whose current state lives in memory and whose
durable state is the backing folder.

What a power loss keeps is what the application made durable, and nothing else:
- a file's data reaches the backing folder only at its fsync or fdatasync: until then every
  write since the last one is a dirty page in memory (and a truncation a smaller `valid` size);
- a directory's entries reach it only at that directory's fsync: creates, links, renames and
  removals since then are in the directory's current listing only. A directory's durable
  listing is kept in memory too, and is written to the backing folder whenever the directory is
  itself in the durable tree (so a new folder fsynced before its parent appears, with what it
  holds, once the parent is fsynced).

The durable tree follows from the durable listings, from the root down. A folder has one place:
when several listings name it (a move with only some of the folders it changed fsynced), the
newest listing puts it there, unless that leaves it out of the tree (its new parent is not in
the tree itself, or the listings form a cycle); then the newest listing that keeps it in does.
A file has every name the tree's listings give it: moved across folders with only the old one
fsynced it is in neither, with only the new one in both, as POSIX allows.

A file's durable data lives in the hidden store `.lossyfs/<ino>` of the backing folder, and each
of its durable names is a hard link to that file, so a durable rename or link never copies data
and a name that is not durable yet never loses the data an fsync made durable. The store holds
nothing else worth keeping: it is emptied at every load.

A cut is the process ending without writing anything more (the backing folder is already the
durable state); with `torn`, the last write before the cut first reaches its file only in part,
some of its 512-byte sectors and not others. A sync (a clean unmount) makes everything durable.

Errors are OSError with an errno, which the FUSE adapter answers as such.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import stat
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

PAGE = 4096
SECTOR = 512
STORE = ".lossyfs"
ROOT = 1
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _remove(path: Path) -> None:
    """Remove whatever is at `path` in the backing folder (nothing there is fine)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@dataclass(eq=False)
class Node:
    """An inode: its attributes, and by kind its data (file), listings (directory) or target
    (symlink)."""

    ino: int
    mode: int
    uid: int
    gid: int
    rdev: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    nlink: int = 1
    # regular file
    size: int = 0  # the current size
    valid: int = 0  # how much of the durable data still shows (a truncation lowers it)
    stored: int = 0  # the durable data's size
    dirty: dict[int, bytearray] = field(default_factory=dict)  # page index -> page
    fd: int | None = None
    opens: int = 0
    durable_refs: int = 0  # durable listings naming it
    # directory
    entries: dict[bytes, int] = field(default_factory=dict)
    durable: dict[bytes, int] = field(default_factory=dict)
    durable_stamp: int = 0  # when its durable listing was last fsynced (a later one is newer)
    cookies: dict[bytes, int] = field(default_factory=dict)  # name -> its readdir offset
    next_cookie: int = 1
    parent: int = ROOT  # the current parent (for `..` and cycles)
    placed: tuple[int, bytes] | None = None  # where it is in the backing folder, if it is
    # symlink
    target: bytes = b""

    @property
    def kind(self) -> int:
        return stat.S_IFMT(self.mode)

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    @property
    def is_file(self) -> bool:
        return self.kind == stat.S_IFREG

    @property
    def unsynced(self) -> bool:
        """Whether the file's data differs from its durable data."""
        return bool(self.dirty) or self.valid < self.stored or self.size != self.stored


@dataclass(frozen=True)
class Loss:
    """What a cut dropped: files with unsynced data, directories with unsynced entries, and the
    torn write's sectors (file, offset, sectors written, sectors dropped)."""

    files: int
    bytes: int
    directories: int
    entries: int
    torn: tuple[int, int, int, int] | None = None


class LossyTree:
    """The model the FUSE adapter serves; every method is synchronous and quick enough to run
    on the file system's event loop."""

    def __init__(self, backing: Path, *, torn: bool = False, seed: int = 0) -> None:
        self.backing = Path(backing)
        self.store = self.backing / STORE
        self.torn = torn
        self._rng = random.Random(seed)
        self.nodes: dict[int, Node] = {}
        self._next = ROOT + 1
        self._last_write: tuple[int, int, bytes] | None = None
        self._stamp = 0
        self.dead = False  # after a cut: nothing more may reach the backing folder

    # --- loading --------------------------------------------------------------------------

    def load(self) -> None:
        """Read the backing folder as the durable state (and the current one): every name a
        node, every file linked into a fresh store."""
        self.backing.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.store, ignore_errors=True)
        self.store.mkdir()
        st = os.stat(self.backing)
        root = self._node_from(ROOT, st)
        root.placed = (ROOT, b"")
        self.nodes = {ROOT: root}
        self._next = ROOT + 1
        seen: dict[tuple[int, int], int] = {}
        todo = deque([(root, self.backing)])
        while todo:
            folder, path = todo.popleft()
            with os.scandir(path) as it:
                names = sorted(e.name for e in it)
            for name in names:
                if folder.ino == ROOT and name == STORE:
                    continue
                child_path = path / name
                st = os.lstat(child_path)
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    node = self.nodes[seen[key]]
                    node.nlink += 1
                else:
                    node = self._node_from(self._new_ino(), st)
                    self.nodes[node.ino] = node
                    if stat.S_ISREG(st.st_mode):
                        seen[key] = node.ino
                        os.link(child_path, self._store_path(node.ino))
                    elif stat.S_ISLNK(st.st_mode):
                        node.target = os.fsencode(os.readlink(child_path))
                    elif stat.S_ISDIR(st.st_mode):
                        node.parent = folder.ino
                        node.placed = (folder.ino, os.fsencode(name))
                        todo.append((node, child_path))
                raw = os.fsencode(name)
                self._enter(folder, raw, node.ino)
                folder.durable[raw] = node.ino
                node.durable_refs += 1
                if node.is_dir:
                    folder.nlink += 1

    def _node_from(self, ino: int, st: os.stat_result) -> Node:
        node = Node(
            ino,
            st.st_mode,
            st.st_uid,
            st.st_gid,
            st.st_rdev,
            st.st_atime_ns,
            st.st_mtime_ns,
            st.st_ctime_ns,
            nlink=2 if stat.S_ISDIR(st.st_mode) else 1,
        )
        if stat.S_ISREG(st.st_mode):
            node.size = node.valid = node.stored = st.st_size
        return node

    def _new_ino(self) -> int:
        ino, self._next = self._next, self._next + 1
        return ino

    def _store_path(self, ino: int) -> Path:
        return self.store / str(ino)

    # --- lookups --------------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise _err(errno.ENOENT) from None

    def folder(self, ino: int) -> Node:
        node = self.node(ino)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        return node

    def lookup(self, parent: int, name: bytes) -> Node:
        folder = self.folder(parent)
        if name == b".":
            return folder
        if name == b"..":
            return self.node(folder.parent)
        if parent == ROOT and name == STORE.encode():
            raise _err(errno.ENOENT)
        try:
            return self.nodes[folder.entries[name]]
        except KeyError:
            raise _err(errno.ENOENT) from None

    def listing(self, ino: int) -> list[tuple[int, bytes, Node]]:
        """A folder's entries with their offsets, in the order they were made: an offset never
        changes while the entry lives, so a listing read in parts while the folder changes
        skips and repeats nothing that stayed."""
        folder = self.folder(ino)
        named = [(folder.cookies[name], name, self.nodes[i]) for name, i in folder.entries.items()]
        return sorted(named, key=lambda e: e[0])

    @staticmethod
    def _enter(folder: Node, name: bytes, ino: int) -> None:
        folder.entries[name] = ino
        folder.cookies[name] = folder.next_cookie
        folder.next_cookie += 1

    @staticmethod
    def _leave(folder: Node, name: bytes) -> None:
        del folder.entries[name]
        folder.cookies.pop(name, None)

    # --- the namespace (current state only) ----------------------------------------------

    def _free_name(self, folder: Node, name: bytes) -> None:
        if name in folder.entries:
            raise _err(errno.EEXIST)
        if folder.ino == ROOT and name == STORE.encode():
            raise _err(errno.EPERM)
        if len(name) > 255:
            raise _err(errno.ENAMETOOLONG)

    def make(self, parent: int, name: bytes, mode: int, uid: int, gid: int, rdev: int = 0) -> Node:
        """A new file, folder, symlink or special file named `name` in `parent`; `mode`
        carries its type."""
        folder = self.folder(parent)
        self._free_name(folder, name)
        now = time.time_ns()
        node = Node(self._new_ino(), mode, uid, gid, rdev, now, now, now)
        if node.is_dir:
            node.nlink = 2
            node.parent = parent
            folder.nlink += 1
        elif node.is_file:
            open(self._store_path(node.ino), "xb").close()
        self.nodes[node.ino] = node
        self._enter(folder, name, node.ino)
        self._touch(folder)
        return node

    def link(self, ino: int, parent: int, name: bytes) -> Node:
        node = self.node(ino)
        if node.is_dir:
            raise _err(errno.EPERM)
        folder = self.folder(parent)
        self._free_name(folder, name)
        self._enter(folder, name, ino)
        node.nlink += 1
        node.ctime_ns = time.time_ns()
        self._touch(folder)
        return node

    def unlink(self, parent: int, name: bytes) -> None:
        folder = self.folder(parent)
        node = self.lookup(parent, name)
        if node.is_dir:
            raise _err(errno.EISDIR)
        self._leave(folder, name)
        self._unref(node)
        self._touch(folder)

    def rmdir(self, parent: int, name: bytes) -> None:
        folder = self.folder(parent)
        if name in (b".", b".."):
            raise _err(errno.EINVAL)
        node = self.lookup(parent, name)
        if not node.is_dir:
            raise _err(errno.ENOTDIR)
        if node.entries:
            raise _err(errno.ENOTEMPTY)
        self._leave(folder, name)
        folder.nlink -= 1
        node.nlink = 0
        self._touch(folder)

    def rename(self, old_parent: int, old: bytes, new_parent: int, new: bytes, flags: int) -> None:
        if flags & RENAME_EXCHANGE:
            raise _err(errno.EINVAL)
        src, dst = self.folder(old_parent), self.folder(new_parent)
        node = self.lookup(old_parent, old)
        replaced = dst.entries.get(new)
        if replaced == node.ino:
            return
        if replaced is not None and flags & RENAME_NOREPLACE:
            raise _err(errno.EEXIST)
        if node.is_dir and self._is_within(new_parent, node.ino):
            raise _err(errno.EINVAL)
        if replaced is not None:
            target = self.nodes[replaced]
            if node.is_dir and not target.is_dir:
                raise _err(errno.ENOTDIR)
            if not node.is_dir and target.is_dir:
                raise _err(errno.EISDIR)
            if target.is_dir:
                if target.entries:
                    raise _err(errno.ENOTEMPTY)
                dst.nlink -= 1
                target.nlink = 0
            else:
                self._unref(target)
        elif new_parent == ROOT and new == STORE.encode():
            raise _err(errno.EPERM)
        self._leave(src, old)
        if new in dst.entries:
            self._leave(dst, new)
        self._enter(dst, new, node.ino)
        if node.is_dir:
            src.nlink -= 1
            dst.nlink += 1
            node.parent = new_parent
        node.ctime_ns = time.time_ns()
        self._touch(src)
        self._touch(dst)

    def _is_within(self, ino: int, ancestor: int) -> bool:
        while True:
            if ino == ancestor:
                return True
            if ino == ROOT:
                return False
            ino = self.nodes[ino].parent

    def _unref(self, node: Node) -> None:
        node.nlink -= 1
        node.ctime_ns = time.time_ns()
        self._maybe_free(node)

    def _maybe_free(self, node: Node) -> None:
        """Forget a file nobody can reach any more: no current name, no open handle, no
        durable name (its store file goes too)."""
        if node.is_file and node.nlink <= 0 and node.opens == 0 and node.durable_refs == 0:
            self._close(node)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._store_path(node.ino))
            del self.nodes[node.ino]
            if self._last_write and self._last_write[0] == node.ino:
                self._last_write = None

    def _touch(self, node: Node) -> None:
        node.mtime_ns = node.ctime_ns = time.time_ns()

    def set_attrs(
        self,
        ino: int,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Node:
        node = self.node(ino)
        if mode is not None:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        if atime_ns is not None:
            node.atime_ns = atime_ns
        if mtime_ns is not None:
            node.mtime_ns = mtime_ns
        node.ctime_ns = time.time_ns()
        return node

    # --- file data ------------------------------------------------------------------------

    def open(self, ino: int) -> Node:
        node = self.node(ino)
        if not node.is_file:
            raise _err(errno.EINVAL)
        node.opens += 1
        return node

    def release(self, ino: int) -> None:
        node = self.node(ino)
        node.opens -= 1
        if node.opens <= 0:
            node.opens = 0
            self._close(node)
            self._maybe_free(node)

    def _fd(self, node: Node) -> int:
        """The store file, open for reading and writing (a read-only file's too: the durable
        copy is ours to write, whatever its mode)."""
        if node.fd is None:
            path = self._store_path(node.ino)
            try:
                node.fd = os.open(path, os.O_RDWR)
            except PermissionError:
                mode = stat.S_IMODE(os.stat(path).st_mode)
                os.chmod(path, mode | stat.S_IRUSR | stat.S_IWUSR)
                try:
                    node.fd = os.open(path, os.O_RDWR)
                finally:
                    os.chmod(path, mode)
        return node.fd

    def _close(self, node: Node) -> None:
        if node.fd is not None:
            os.close(node.fd)
            node.fd = None

    def _durable_page(self, node: Node, index: int) -> bytearray:
        """A page as the durable data shows it now: what is stored up to `valid`, zeros after."""
        start = index * PAGE
        page = bytearray(PAGE)
        if start < node.valid:
            data = os.pread(self._fd(node), min(PAGE, node.valid - start), start)
            page[: len(data)] = data
        return page

    def read(self, ino: int, offset: int, size: int) -> bytes:
        node = self.node(ino)
        end = min(offset + size, node.size)
        if offset >= end:
            return b""
        out = bytearray()
        index = offset // PAGE
        while index * PAGE < end:
            page = node.dirty.get(index)
            if page is None:
                page = self._durable_page(node, index)
            lo = max(offset, index * PAGE) - index * PAGE
            hi = min(end, (index + 1) * PAGE) - index * PAGE
            out += page[lo:hi]
            index += 1
        node.atime_ns = time.time_ns()
        return bytes(out)

    def write(self, ino: int, offset: int, data: bytes) -> int:
        node = self.node(ino)
        pos = offset
        view = memoryview(data)
        while view:
            index, lo = divmod(pos, PAGE)
            page = node.dirty.get(index)
            if page is None:
                page = node.dirty[index] = self._durable_page(node, index)
            n = min(PAGE - lo, len(view))
            page[lo : lo + n] = view[:n]
            view = view[n:]
            pos += n
        node.size = max(node.size, offset + len(data))
        node.mtime_ns = node.ctime_ns = time.time_ns()
        self._last_write = (ino, offset, bytes(data))
        return len(data)

    def truncate(self, ino: int, size: int) -> Node:
        node = self.node(ino)
        if not node.is_file:
            raise _err(errno.EINVAL)
        if size < node.size:
            node.valid = min(node.valid, size)
            for index in [i for i in node.dirty if i * PAGE >= size]:
                del node.dirty[index]
            last = size // PAGE
            if size % PAGE and last in node.dirty:
                node.dirty[last][size % PAGE :] = bytes(PAGE - size % PAGE)
        node.size = size
        node.mtime_ns = node.ctime_ns = time.time_ns()
        return node

    # --- durability -----------------------------------------------------------------------

    def fsync(self, ino: int) -> None:
        """Make a file's data durable (its names stay as durable as their folders)."""
        node = self.node(ino)
        if not node.is_file:
            return
        fd = self._fd(node)
        if node.unsynced:
            os.ftruncate(fd, node.valid)
            for index in sorted(node.dirty):
                start = index * PAGE
                if start < node.size:
                    os.pwrite(fd, node.dirty[index][: min(PAGE, node.size - start)], start)
            os.ftruncate(fd, node.size)
        node.dirty.clear()
        node.valid = node.stored = node.size
        os.chmod(fd, stat.S_IMODE(node.mode))
        os.utime(fd, ns=(node.atime_ns, node.mtime_ns))
        if self._last_write and self._last_write[0] == ino:
            self._last_write = None
        if node.opens == 0:
            self._close(node)

    def fsyncdir(self, ino: int) -> None:
        """Make a folder's entries durable: its durable listing becomes its current one, and
        the backing folder is brought to the durable tree that follows."""
        folder = self.folder(ino)
        old, new = folder.durable, dict(folder.entries)
        folder.durable = new
        self._stamp += 1
        folder.durable_stamp = self._stamp
        for name, i in new.items():
            if old.get(name) != i:
                self.nodes[i].durable_refs += 1
        self._materialize(folder)
        for name, i in old.items():
            if new.get(name) != i and i in self.nodes:
                self._durable_unref(self.nodes[i])

    def _durable_unref(self, node: Node) -> None:
        node.durable_refs -= 1
        self._maybe_free(node)

    # --- the backing folder as the durable tree -------------------------------------------

    def _durable_tree(self) -> dict[int, tuple[int, bytes]]:
        """Where each folder of the durable tree is, from the durable listings.

        A listing fsynced later is newer, and a folder named by several listings (a move with
        only some of the folders it changed fsynced) is where the newest of them puts it,
        unless that leaves it out of the tree (its new parent not durable itself, or a cycle
        of listings): then the newest listing that keeps it in the tree does. A folder no
        listing of the tree names is not in it.
        """
        named: dict[int, list[tuple[int, int, bytes]]] = {}  # folder -> (stamp, parent, name)
        for folder in self.nodes.values():
            if folder.is_dir:
                for name, i in folder.durable.items():
                    node = self.nodes.get(i)
                    if node is not None and node.is_dir and i != ROOT:
                        named.setdefault(i, []).append((folder.durable_stamp, folder.ino, name))
        for options in named.values():
            options.sort(key=lambda o: (-o[0], o[1], o[2]))
        places: dict[int, tuple[int, bytes]] = {}
        rooted: set[int] = set()
        # Each pass puts every folder at the newest listing that is in the tree and not below
        # it; the tree only grows, so this settles (the bound is a guard, never reached).
        # Folders whose newest listing is newest go first: when listings form a cycle, more
        # than one tree fits the rule, and the one that honours the latest fsync is kept.
        order = sorted(named, key=lambda i: (-named[i][0][0], i))
        for _ in range(4 * len(named) + 4):
            moved = False
            for i in order:
                for _stamp, parent, name in named[i]:
                    if parent == ROOT or (parent in rooted and not self._inside(parent, i, places)):
                        if places.get(i) != (parent, name):
                            places[i] = (parent, name)
                            rooted = self._rooted(places)
                            moved = True
                        break
            if not moved:
                break
        return {i: places[i] for i in self._in_tree_order(places, rooted)}

    @staticmethod
    def _inside(ino: int, ancestor: int, places: dict[int, tuple[int, bytes]]) -> bool:
        """Whether `ino` is `ancestor` or under it by `places`."""
        seen = set()
        while ino != ROOT and ino not in seen:
            if ino == ancestor:
                return True
            seen.add(ino)
            if ino not in places:
                return False
            ino = places[ino][0]
        return False

    @staticmethod
    def _rooted(places: dict[int, tuple[int, bytes]]) -> set[int]:
        """The folders whose chain of places reaches the root."""
        rooted: set[int] = set()
        for start in places:
            chain, ino = [], start
            while ino != ROOT and ino not in rooted and ino in places and ino not in chain:
                chain.append(ino)
                ino = places[ino][0]
            if ino == ROOT or ino in rooted:
                rooted.update(chain)
        return rooted

    @staticmethod
    def _in_tree_order(places: dict[int, tuple[int, bytes]], rooted: set[int]) -> list[int]:
        """The rooted folders, each after its parent."""
        children: dict[int, list[int]] = {}
        for i in rooted:
            children.setdefault(places[i][0], []).append(i)
        order, todo = [], deque([ROOT])
        while todo:
            for i in sorted(children.get(todo.popleft(), ()), key=lambda i: places[i][1]):
                order.append(i)
                todo.append(i)
        return order

    def _path(self, ino: int, places: dict[int, tuple[int, bytes]]) -> Path:
        parts: list[str] = []
        while ino != ROOT:
            ino, name = places[ino]
            parts.append(os.fsdecode(name))
        return self.backing.joinpath(*reversed(parts))

    def _materialize(self, changed: Node) -> None:
        """Bring the backing folder to the durable tree after `changed`'s durable listing
        changed: folders whose place changed or went are moved aside (deepest first), every
        folder is put at its place (moved back, or made with its durable entries), then the
        changed folder's other entries are linked or removed; what was moved aside and has no
        place any more goes."""
        before = {n.ino: n.placed for n in self.nodes.values() if n.placed and n.ino != ROOT}
        after = self._durable_tree()
        held = self.store / "held"
        held.mkdir(exist_ok=True)
        moving = [i for i, place in before.items() if after.get(i) != place]
        depth = {i: len(self._path(i, before).parts) for i in moving}
        for i in sorted(moving, key=lambda i: -depth[i]):
            os.rename(self._path(i, before), held / str(i))
        fresh: list[int] = []
        for i, place in after.items():
            if before.get(i) == place:
                continue
            target = self._path(i, after)
            _remove(target)
            if i in before:
                os.rename(held / str(i), target)
            else:
                os.mkdir(target, 0o700)
                fresh.append(i)
            self.nodes[i].placed = place
        for i in set(before) - set(after):
            self.nodes[i].placed = None
        for i in fresh:
            self._link_entries(self.nodes[i], self._path(i, after))
        for i in fresh:
            os.chmod(self._path(i, after), stat.S_IMODE(self.nodes[i].mode))
        if changed.ino == ROOT or changed.ino in after:
            path = self._path(changed.ino, after)
            self._link_entries(changed, path)
            os.chmod(path, stat.S_IMODE(changed.mode))  # its own attributes: its fsync's too
        shutil.rmtree(held, ignore_errors=True)

    def _link_entries(self, folder: Node, path: Path) -> None:
        """Make a placed folder's entries other than folders match its durable listing: each
        file a hard link to its store file, each symlink and special file made; anything else
        there that is not one of its placed folders goes."""
        wanted = {os.fsdecode(n): self.nodes[i] for n, i in folder.durable.items()}
        with os.scandir(path) as it:
            present = {e.name for e in it}
        if folder.ino == ROOT:
            present.discard(STORE)
        for name in present:
            node = wanted.get(name)
            if node is None or (not node.is_dir and not self._is_entry(node, path / name)):
                _remove(path / name)
        for name, node in wanted.items():
            target = path / name
            if node.is_dir or os.path.lexists(target):
                continue
            if node.is_file:
                os.link(self._store_path(node.ino), target)
            elif stat.S_ISLNK(node.mode):
                os.symlink(node.target, target)
            else:
                os.mknod(target, node.mode, node.rdev)

    def _is_entry(self, node: Node, target: Path) -> bool:
        """Whether the backing entry `target` already is `node`'s."""
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return False
        if node.is_file:
            return (
                stat.S_ISREG(st.st_mode) and st.st_ino == os.stat(self._store_path(node.ino)).st_ino
            )
        if stat.S_ISLNK(node.mode):
            return stat.S_ISLNK(st.st_mode) and os.fsencode(os.readlink(target)) == node.target
        return stat.S_IFMT(st.st_mode) == node.kind

    def sync(self) -> None:
        """Make everything durable, as `sync` before a clean unmount does: every file's data,
        then every folder's entries from the root down."""
        for node in list(self.nodes.values()):
            if node.is_file and node.unsynced:
                self.fsync(node.ino)
        todo = deque([ROOT])
        while todo:
            folder = self.nodes[todo.popleft()]
            if folder.durable != folder.entries:
                self.fsyncdir(folder.ino)
            todo.extend(i for i in folder.entries.values() if self.nodes[i].is_dir)

    def pending(self) -> Loss:
        """What a cut now would drop."""
        files = [n for n in self.nodes.values() if n.is_file and n.unsynced]
        folders = [n for n in self.nodes.values() if n.is_dir and n.durable != n.entries]
        entries = sum(len(set(f.durable.items()) ^ set(f.entries.items())) for f in folders)
        return Loss(
            len(files), sum(len(n.dirty) * PAGE for n in files), len(folders), entries, None
        )

    def cut(self) -> Loss:
        """A power loss: report what is dropped and, with `torn`, write part of the last write
        to its file first. Nothing is written after this; the caller stops serving."""
        loss = self.pending()
        self.dead = True
        torn = self._tear() if self.torn else None
        for node in self.nodes.values():
            self._close(node)
        return Loss(loss.files, loss.bytes, loss.directories, loss.entries, torn)

    def _tear(self) -> tuple[int, int, int, int] | None:
        """Write some of the last write's 512-byte sectors to its durable file and not the
        others (at least one of each when it spans two or more): a write the disk was in the
        middle of."""
        if self._last_write is None:
            return None
        ino, offset, data = self._last_write
        node = self.nodes.get(ino)
        if node is None or not node.is_file:
            return None
        pieces = []
        pos, end = offset, offset + len(data)
        while pos < end:
            stop = min(end, (pos // SECTOR + 1) * SECTOR)
            pieces.append((pos, data[pos - offset : stop - offset]))
            pos = stop
        if len(pieces) == 1:
            keep = [pieces[0]] if self._rng.random() < 0.5 else []
        else:
            count = self._rng.randint(1, len(pieces) - 1)
            keep = self._rng.sample(pieces, count)
        fd = os.open(self._store_path(ino), os.O_WRONLY)
        try:
            for pos, piece in keep:
                # past the durable end a torn append is invisible: its size never committed
                if pos < node.stored:
                    os.pwrite(fd, piece[: node.stored - pos], pos)
        finally:
            os.close(fd)
        return (ino, offset, len(keep), len(pieces) - len(keep))
