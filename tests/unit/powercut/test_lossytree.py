"""The lossy file system's tree without FUSE: its methods driven directly over a tmp_path backing
folder, a cut, and the next mount simulated by a new tree loading the same folder.

Example tests pin each rule (unsynced data and entries are lost, a folder is durable with its
parent's fsync and then with its own durable listing, folders move to one place, hard links,
truncation, holes, pages, torn sectors, sync, pending, the hidden store, errors). A hypothesis
test then runs random operations against the tree and against an independent dict model of the
current and durable states, and holds the reloaded tree to the model's durable state.

Tests marked xfail(strict=True) are bugs of tree.py found here; each asserts what the tree
should do."""

from __future__ import annotations

import copy
import errno
import os
import stat
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from aoscore_py.powercut.lossyfs.tree import (
    PAGE,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT,
    SECTOR,
    STORE,
    Loss,
    LossyTree,
    Node,
)

DIR = stat.S_IFDIR | 0o755
FILE = stat.S_IFREG | 0o644
NO_LOSS = Loss(0, 0, 0, 0, None)

Snapshot = dict[str, object]


def close_all(tree: LossyTree) -> None:
    """Close the store files a tree holds open (a cut does it too)."""
    for node in tree.nodes.values():
        tree._close(node)


def snapshot(tree: LossyTree, ino: int = ROOT) -> Snapshot:
    """A folder as nested dicts: a file is its bytes, a folder a dict, a symlink its target."""
    out: Snapshot = {}
    for name, node in tree.listing(ino):
        key = name.decode()
        if node.is_dir:
            out[key] = snapshot(tree, node.ino)
        elif node.is_file:
            out[key] = tree.read(node.ino, 0, node.size + PAGE)
        elif stat.S_ISLNK(node.mode):
            out[key] = ("symlink", node.target)
        else:
            out[key] = ("special", stat.S_IFMT(node.mode))
    return out


def backing_snapshot(path: Path, top: bool = True) -> Snapshot:
    """The backing folder itself, read with os (the store left out)."""
    out: Snapshot = {}
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if top and entry.name == STORE:
            continue
        if entry.is_dir(follow_symlinks=False):
            out[entry.name] = backing_snapshot(Path(entry.path), top=False)
        else:
            out[entry.name] = Path(entry.path).read_bytes()
    return out


class Lab:
    """A tree over a backing folder, addressed by slash paths, and its remounts."""

    def __init__(self, backing: Path, *, torn: bool = False, seed: int = 0) -> None:
        self.backing = backing
        self.trees: list[LossyTree] = []
        self.tree = self.mount(torn=torn, seed=seed)

    def mount(self, *, torn: bool = False, seed: int = 0) -> LossyTree:
        tree = LossyTree(self.backing, torn=torn, seed=seed)
        tree.load()
        self.trees.append(tree)
        return tree

    def cut(self) -> Loss:
        """A power loss, then the next mount: a new tree loading what the backing kept."""
        loss = self.tree.cut()
        self.tree = self.mount()
        return loss

    def close(self) -> None:
        for tree in self.trees:
            close_all(tree)

    # --- paths ----------------------------------------------------------------------------

    def node(self, path: str) -> Node:
        node = self.tree.node(ROOT)
        for part in filter(None, path.split("/")):
            node = self.tree.lookup(node.ino, part.encode())
        return node

    def ino(self, path: str) -> int:
        return self.node(path).ino

    def split(self, path: str) -> tuple[int, bytes]:
        head, _, name = path.rpartition("/")
        return self.ino(head), name.encode()

    # --- operations -----------------------------------------------------------------------

    def mkdir(self, path: str) -> int:
        parent, name = self.split(path)
        return self.tree.make(parent, name, DIR, 0, 0).ino

    def create(self, path: str, data: bytes = b"", *, fsync: bool = False) -> int:
        parent, name = self.split(path)
        ino = self.tree.make(parent, name, FILE, 0, 0).ino
        if data:
            self.tree.write(ino, 0, data)
        if fsync:
            self.tree.fsync(ino)
        return ino

    def write(self, path: str, offset: int, data: bytes) -> None:
        self.tree.write(self.ino(path), offset, data)

    def truncate(self, path: str, size: int) -> None:
        self.tree.truncate(self.ino(path), size)

    def read(self, path: str, offset: int = 0, size: int = 1 << 20) -> bytes:
        return self.tree.read(self.ino(path), offset, size)

    def fsync(self, path: str) -> None:
        self.tree.fsync(self.ino(path))

    def fsyncdir(self, *paths: str) -> None:
        for path in paths or ("",):
            self.tree.fsyncdir(self.ino(path))

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        self.tree.rename(*self.split(old), *self.split(new), flags)

    def link(self, old: str, new: str) -> None:
        self.tree.link(self.ino(old), *self.split(new))

    def unlink(self, path: str) -> None:
        self.tree.unlink(*self.split(path))

    def rmdir(self, path: str) -> None:
        self.tree.rmdir(*self.split(path))

    def names(self, path: str = "") -> list[str]:
        return [name.decode() for name, _ in self.tree.listing(self.ino(path))]

    def snap(self) -> Snapshot:
        return snapshot(self.tree)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path / "backing")
    yield lab
    lab.close()


def torn_lab(tmp_path: Path, seed: int) -> Lab:
    return Lab(tmp_path / f"backing-{seed}", torn=True, seed=seed)


@contextmanager
def raises_errno(code: int) -> Iterator[None]:
    """The block raises OSError with exactly this errno."""
    with pytest.raises(OSError) as info:
        yield
    assert info.value.errno == code, f"{errno.errorcode.get(info.value.errno or 0)}: {info.value}"


# --- file data --------------------------------------------------------------------------------


class TestFileData:
    def test_data_written_since_the_last_fsync_is_lost(self, lab: Lab) -> None:
        lab.create("f", b"old", fsync=True)
        lab.fsyncdir()
        lab.write("f", 0, b"new data nobody synced")
        assert lab.read("f") == b"new data nobody synced"
        lab.cut()
        assert lab.snap() == {"f": b"old"}

    def test_fsynced_data_survives(self, lab: Lab) -> None:
        lab.create("f", b"v1", fsync=True)
        lab.fsyncdir()
        lab.write("f", 0, b"v2, longer")
        lab.fsync("f")
        lab.cut()
        assert lab.snap() == {"f": b"v2, longer"}
        assert (lab.backing / "f").read_bytes() == b"v2, longer"

    def test_a_durable_name_with_data_never_fsynced_comes_back_empty(self, lab: Lab) -> None:
        lab.create("f", b"written, not synced")
        lab.fsyncdir()
        lab.cut()
        assert lab.snap() == {"f": b""}

    def test_fsynced_data_under_a_name_not_durable_is_lost(self, lab: Lab) -> None:
        lab.create("f", b"synced data, unsynced name", fsync=True)
        lab.cut()
        assert lab.snap() == {}
        assert os.listdir(lab.backing / STORE) == []  # the store was emptied at the load

    def test_an_unsynced_truncation_is_lost_and_a_synced_one_kept(self, lab: Lab) -> None:
        lab.create("f", b"0123456789", fsync=True)
        lab.create("g", b"0123456789", fsync=True)
        lab.fsyncdir()
        lab.truncate("f", 3)
        lab.truncate("g", 3)
        lab.fsync("g")
        assert lab.read("f") == b"012"
        lab.cut()
        assert lab.snap() == {"f": b"0123456789", "g": b"012"}

    def test_truncate_then_grow_reads_zeros_not_the_old_bytes(self, lab: Lab) -> None:
        lab.create("f", b"A" * 6000, fsync=True)
        lab.fsyncdir()
        lab.truncate("f", 100)
        lab.truncate("f", 6000)
        assert lab.read("f") == b"A" * 100 + bytes(5900)
        lab.write("f", 50, b"B" * 10)  # a page made dirty after the truncation
        expected = b"A" * 50 + b"B" * 10 + b"A" * 40 + bytes(5900)
        assert lab.read("f") == expected
        lab.fsync("f")
        lab.cut()
        assert lab.snap() == {"f": expected}

    def test_truncate_zeroes_the_tail_of_a_dirty_page(self, lab: Lab) -> None:
        lab.create("f", b"")
        lab.fsyncdir()
        lab.write("f", 0, b"x" * 3000)
        lab.truncate("f", 10)
        lab.truncate("f", 3000)
        assert lab.read("f") == b"x" * 10 + bytes(2990)
        lab.fsync("f")
        lab.cut()
        assert lab.snap() == {"f": b"x" * 10 + bytes(2990)}

    def test_a_write_past_the_end_leaves_a_hole_of_zeros(self, lab: Lab) -> None:
        lab.create("f", b"head", fsync=True)
        lab.fsyncdir()
        lab.write("f", 2 * PAGE + 7, b"tail")
        assert lab.node("f").size == 2 * PAGE + 11
        expected = b"head" + bytes(2 * PAGE + 3) + b"tail"
        assert lab.read("f") == expected
        lab.fsync("f")
        lab.cut()
        assert lab.snap() == {"f": expected}
        assert (lab.backing / "f").stat().st_size == 2 * PAGE + 11

    def test_reads_span_dirty_and_durable_pages(self, lab: Lab) -> None:
        durable = bytes(i % 251 for i in range(3 * PAGE + 100))
        lab.create("f", durable, fsync=True)
        lab.fsyncdir()
        lab.write("f", PAGE - 2, b"XYZW")  # the end of page 0 and the start of page 1
        current = bytearray(durable)
        current[PAGE - 2 : PAGE + 2] = b"XYZW"
        for offset, size in [(0, 10), (PAGE - 5, 10), (PAGE - 1, PAGE + 3), (0, 5 * PAGE)]:
            assert lab.read("f", offset, size) == bytes(current[offset : offset + size])
        assert lab.read("f", 3 * PAGE + 90, 100) == bytes(current[3 * PAGE + 90 :])
        assert lab.read("f", 3 * PAGE + 100, 10) == b""  # at the end
        assert lab.read("f", 10 * PAGE, 10) == b""  # past it
        assert len(lab.read("f", 0, 1 << 20)) == len(durable)

    def test_a_write_spanning_pages_comes_back_whole_after_fsync(self, lab: Lab) -> None:
        data = os.urandom(3 * PAGE)
        lab.create("f")
        lab.fsyncdir()
        lab.write("f", 100, data)
        lab.fsync("f")
        lab.cut()
        assert lab.read("f") == bytes(100) + data


# --- directory entries --------------------------------------------------------------------------


class TestEntries:
    def test_a_new_name_is_lost_until_its_folder_is_fsynced(self, lab: Lab) -> None:
        lab.create("kept", b"k", fsync=True)
        lab.fsyncdir()
        lab.create("lost", b"l", fsync=True)
        assert lab.names() == ["kept", "lost"]
        lab.cut()
        assert lab.snap() == {"kept": b"k"}

    @pytest.mark.parametrize("fsynced", [False, True])
    def test_an_unlink_is_durable_only_with_the_folders_fsync(
        self, lab: Lab, fsynced: bool
    ) -> None:
        lab.create("f", b"data", fsync=True)
        lab.fsyncdir()
        lab.unlink("f")
        assert lab.names() == []
        if fsynced:
            lab.fsyncdir()
        lab.cut()
        assert lab.snap() == ({} if fsynced else {"f": b"data"})

    def test_an_unlinked_name_keeps_the_data_an_fsync_made_durable(self, lab: Lab) -> None:
        ino = lab.create("f", b"v1", fsync=True)
        lab.fsyncdir()
        lab.tree.open(ino)  # a handle keeps the file after its name goes
        lab.unlink("f")
        lab.tree.write(ino, 0, b"v2")
        lab.tree.fsync(ino)
        lab.tree.release(ino)
        lab.cut()  # the unlink was never made durable: the name is back, with v2
        assert lab.snap() == {"f": b"v2"}

    def test_a_rename_without_fsyncing_the_folder_is_lost(self, lab: Lab) -> None:
        lab.create("config", b"v1", fsync=True)
        lab.fsyncdir()
        lab.create("config.tmp", b"v2", fsync=True)
        lab.fsyncdir()
        lab.rename("config.tmp", "config")
        assert lab.snap() == {"config": b"v2"}
        lab.cut()
        assert lab.snap() == {"config": b"v1", "config.tmp": b"v2"}

    def test_the_right_writer_loses_nothing(self, lab: Lab) -> None:
        for version in range(4):
            data = f"version {version}".encode()
            lab.create("state.tmp", data, fsync=True)
            lab.rename("state.tmp", "state")
            lab.fsyncdir()
            lab.cut()
            assert lab.snap() == {"state": data}

    def test_a_rename_over_a_file_replaces_it_when_fsynced(self, lab: Lab) -> None:
        lab.create("a", b"A", fsync=True)
        lab.create("b", b"B", fsync=True)
        lab.fsyncdir()
        lab.rename("a", "b")
        lab.fsyncdir()
        lab.cut()
        assert lab.snap() == {"b": b"A"}

    def test_a_file_moved_to_another_folder_with_both_fsynced(self, lab: Lab) -> None:
        lab.mkdir("src")
        lab.mkdir("dst")
        lab.create("src/f", b"payload", fsync=True)
        lab.fsyncdir("src", "dst", "")
        lab.rename("src/f", "dst/g")
        lab.fsyncdir("src", "dst")
        lab.cut()
        assert lab.snap() == {"src": {}, "dst": {"g": b"payload"}}

    def test_a_file_moved_with_only_the_new_folder_fsynced_has_both_names(self, lab: Lab) -> None:
        # Each folder's entries are durable on their own: the old name was never removed.
        lab.mkdir("src")
        lab.mkdir("dst")
        lab.create("src/f", b"payload", fsync=True)
        lab.fsyncdir("src", "dst", "")
        lab.rename("src/f", "dst/g")
        lab.fsyncdir("dst")
        lab.cut()
        assert lab.snap() == {"src": {"f": b"payload"}, "dst": {"g": b"payload"}}
        assert lab.ino("src/f") == lab.ino("dst/g")  # one file, two names
        assert (
            os.stat(lab.backing / "src" / "f").st_ino == os.stat(lab.backing / "dst" / "g").st_ino
        )

    def test_a_file_moved_with_only_the_old_folder_fsynced_is_lost(self, lab: Lab) -> None:
        # What the tree does (the docstring's per-folder rule): neither name is durable. A
        # journaling file system would keep one of them; see the report.
        lab.mkdir("src")
        lab.mkdir("dst")
        lab.create("src/f", b"payload", fsync=True)
        lab.fsyncdir("src", "dst", "")
        lab.rename("src/f", "dst/g")
        lab.fsyncdir("src")
        lab.cut()
        assert lab.snap() == {"src": {}, "dst": {}}

    def test_a_symlink_and_a_fifo_are_kept_by_their_folders_fsync(self, lab: Lab) -> None:
        link = lab.tree.make(ROOT, b"l", stat.S_IFLNK | 0o777, 0, 0)
        link.target = b"somewhere/else"
        lab.tree.make(ROOT, b"p", stat.S_IFIFO | 0o600, 0, 0)
        lab.tree.make(ROOT, b"q", stat.S_IFLNK | 0o777, 0, 0).target = b"q-target"
        lab.fsyncdir()
        lab.unlink("q")
        lab.cut()
        assert lab.snap() == {
            "l": ("symlink", b"somewhere/else"),
            "p": ("special", stat.S_IFIFO),
            "q": ("symlink", b"q-target"),
        }
        assert os.readlink(lab.backing / "l") == "somewhere/else"


# --- folders ----------------------------------------------------------------------------------


class TestFolders:
    def test_a_folder_fsynced_before_its_parent_is_not_durable(self, lab: Lab) -> None:
        lab.mkdir("dir")
        lab.create("dir/f", b"x", fsync=True)
        lab.fsyncdir("dir")  # its entries, but not its own name
        lab.cut()
        assert lab.snap() == {}
        assert backing_snapshot(lab.backing) == {}

    def test_a_folder_whose_parent_is_fsynced_comes_with_its_durable_listing(
        self, lab: Lab
    ) -> None:
        lab.mkdir("a")
        lab.mkdir("a/b")
        lab.create("a/b/kept", b"k", fsync=True)
        lab.create("a/b/lost", b"l")
        lab.fsyncdir("a/b")
        lab.create("a/b/late", b"after the folder's fsync", fsync=True)
        lab.fsyncdir("a")
        assert backing_snapshot(lab.backing) == {}  # a's own name is not durable yet
        lab.fsyncdir()
        assert backing_snapshot(lab.backing) == {"a": {"b": {"kept": b"k", "lost": b""}}}
        lab.cut()
        assert lab.snap() == {"a": {"b": {"kept": b"k", "lost": b""}}}

    def test_a_folder_never_fsynced_itself_comes_back_empty(self, lab: Lab) -> None:
        lab.mkdir("d")
        lab.create("d/f", b"data", fsync=True)
        lab.fsyncdir()
        lab.cut()
        assert lab.snap() == {"d": {}}

    def test_a_placed_folders_fsync_writes_its_entries_at_once(self, lab: Lab) -> None:
        lab.mkdir("d")
        lab.fsyncdir()
        lab.create("d/f", b"data", fsync=True)
        lab.fsyncdir("d")
        assert backing_snapshot(lab.backing) == {"d": {"f": b"data"}}
        lab.unlink("d/f")
        lab.fsyncdir("d")
        assert backing_snapshot(lab.backing) == {"d": {}}

    def test_an_rmdir_is_durable_with_the_parents_fsync(self, lab: Lab) -> None:
        lab.mkdir("d")
        lab.fsyncdir()
        lab.rmdir("d")
        lab.cut()
        assert lab.snap() == {"d": {}}
        lab.rmdir("d")
        lab.fsyncdir()
        lab.cut()
        assert lab.snap() == {}

    def test_a_folder_removed_with_unsynced_removals_inside(self, lab: Lab) -> None:
        lab.mkdir("d")
        lab.create("d/f", b"x", fsync=True)
        lab.fsyncdir("d", "")
        lab.unlink("d/f")
        lab.rmdir("d")  # d's own removal of f is not durable: d comes back whole
        lab.cut()
        assert lab.snap() == {"d": {"f": b"x"}}

    def test_a_folder_moved_with_both_folders_fsynced_is_moved(self, lab: Lab) -> None:
        lab.mkdir("src")
        lab.mkdir("src/d")
        lab.mkdir("dst")
        lab.create("src/d/f", b"payload", fsync=True)
        lab.fsyncdir("src/d", "src", "dst", "")
        lab.rename("src/d", "dst/d")
        lab.fsyncdir("dst", "src")
        lab.cut()
        assert lab.snap() == {"src": {}, "dst": {"d": {"f": b"payload"}}}

    def test_a_folder_moved_with_only_the_new_folder_fsynced_has_one_place(self, lab: Lab) -> None:
        lab.mkdir("src")
        lab.mkdir("src/d")
        lab.mkdir("dst")
        lab.create("src/d/f", b"payload", fsync=True)
        lab.fsyncdir("src/d", "src", "dst", "")
        lab.rename("src/d", "dst/d")
        lab.fsyncdir("dst")
        assert lab.tree.pending() == NO_LOSS  # src's durable listing no longer names d
        lab.cut()
        assert lab.snap() == {"src": {}, "dst": {"d": {"f": b"payload"}}}

    def test_a_folder_moved_with_only_the_old_folder_fsynced_is_gone_until_the_new_one_is(
        self, lab: Lab
    ) -> None:
        # What the tree does: the folder is in neither durable listing, so it and everything
        # in it (fsynced long before) are not in the backing folder. See the report.
        lab.mkdir("src")
        lab.mkdir("src/d")
        lab.mkdir("dst")
        lab.create("src/d/f", b"payload", fsync=True)
        lab.fsyncdir("src/d", "src", "dst", "")
        lab.rename("src/d", "dst/d")
        lab.fsyncdir("src")
        assert backing_snapshot(lab.backing) == {"src": {}, "dst": {}}
        lab.fsyncdir("dst")  # made again from its durable listing, kept in memory
        assert backing_snapshot(lab.backing) == {"src": {}, "dst": {"d": {"f": b"payload"}}}
        lab.cut()
        assert lab.snap() == {"src": {}, "dst": {"d": {"f": b"payload"}}}

    def test_a_folder_renamed_in_place(self, lab: Lab) -> None:
        lab.mkdir("old")
        lab.create("old/f", b"x", fsync=True)
        lab.fsyncdir("old", "")
        lab.rename("old", "new")
        lab.cut()
        assert lab.snap() == {"old": {"f": b"x"}}
        lab.rename("old", "new")
        lab.fsyncdir()
        lab.cut()
        assert lab.snap() == {"new": {"f": b"x"}}

    def test_a_folder_moved_into_a_new_folder_follows_it(self, lab: Lab) -> None:
        lab.mkdir("d")
        lab.create("d/f", b"x", fsync=True)
        lab.fsyncdir("d", "")
        lab.mkdir("n")
        lab.rename("d", "n/d")
        lab.fsyncdir("n")  # n is not durable yet: d stays where the backing has it
        assert backing_snapshot(lab.backing) == {"d": {"f": b"x"}}
        lab.fsyncdir()
        assert backing_snapshot(lab.backing) == {"n": {"d": {"f": b"x"}}}
        lab.cut()
        assert lab.snap() == {"n": {"d": {"f": b"x"}}}

    def test_a_folder_renamed_over_an_empty_durable_folder(self, lab: Lab) -> None:
        lab.mkdir("a")
        lab.mkdir("b")
        lab.create("a/f", b"x", fsync=True)
        lab.create("b/old", b"o", fsync=True)
        lab.fsyncdir("a", "b", "")
        lab.unlink("b/old")  # b is empty now, though its durable listing is not
        lab.rename("a", "b")
        lab.cut()
        assert lab.snap() == {"a": {"f": b"x"}, "b": {"old": b"o"}}
        lab.unlink("b/old")
        lab.rename("a", "b")
        lab.fsyncdir()
        lab.cut()
        assert lab.snap() == {"b": {"f": b"x"}}


# --- hard links -------------------------------------------------------------------------------


class TestHardLinks:
    def test_a_durable_link_shares_the_file(self, lab: Lab) -> None:
        lab.create("f", b"one", fsync=True)
        lab.link("f", "g")
        assert lab.node("f").nlink == 2
        lab.fsyncdir()
        lab.write("g", 0, b"two")
        lab.fsync("g")
        lab.cut()
        assert lab.snap() == {"f": b"two", "g": b"two"}
        assert lab.ino("f") == lab.ino("g")
        assert lab.node("f").nlink == 2
        assert os.stat(lab.backing / "f").st_ino == os.stat(lab.backing / "g").st_ino

    def test_a_link_not_fsynced_is_lost(self, lab: Lab) -> None:
        lab.create("f", b"one", fsync=True)
        lab.fsyncdir()
        lab.link("f", "g")
        lab.cut()
        assert lab.snap() == {"f": b"one"}

    def test_a_link_in_another_folder(self, lab: Lab) -> None:
        lab.mkdir("d")
        lab.create("f", b"one", fsync=True)
        lab.link("f", "d/g")
        lab.fsyncdir("d", "")
        lab.unlink("f")
        lab.fsyncdir()
        lab.cut()
        assert lab.snap() == {"d": {"g": b"one"}}

    def test_truncation_and_links_follow_their_fsyncs(self, lab: Lab) -> None:
        lab.create("f", b"0123456789" * 1000, fsync=True)
        lab.link("f", "g")
        lab.fsyncdir()
        lab.truncate("f", 5)
        lab.fsync("f")
        lab.truncate("g", 2)  # the same file: not synced
        lab.cut()
        assert lab.snap() == {"f": b"01234", "g": b"01234"}

    def test_a_rename_onto_another_name_of_the_same_file_does_nothing(self, lab: Lab) -> None:
        lab.create("f", b"x", fsync=True)
        lab.link("f", "g")
        lab.rename("f", "g")
        assert lab.names() == ["f", "g"]
        assert lab.node("f").nlink == 2

    def test_the_load_reads_hard_links_as_one_file(self, tmp_path: Path) -> None:
        backing = tmp_path / "backing"
        (backing / "d").mkdir(parents=True)
        (backing / "f").write_bytes(b"shared")
        os.link(backing / "f", backing / "d" / "g")
        (backing / STORE).mkdir()
        (backing / STORE / "junk").write_bytes(b"from an older mount")
        lab = Lab(backing)
        try:
            assert lab.snap() == {"d": {"g": b"shared"}, "f": b"shared"}
            assert lab.ino("f") == lab.ino("d/g")
            assert lab.node("f").nlink == 2
            assert lab.node("d").nlink == 2 and lab.node("").nlink == 3
            assert os.listdir(backing / STORE) == [str(lab.ino("f"))]
            assert lab.tree.pending() == NO_LOSS
        finally:
            lab.close()


# --- torn writes ------------------------------------------------------------------------------


def _sectors(data: bytes) -> list[bytes]:
    return [data[i : i + SECTOR] for i in range(0, len(data), SECTOR)]


class TestTorn:
    @pytest.mark.parametrize("seed", range(8))
    def test_a_torn_write_keeps_some_whole_sectors_and_drops_the_others(
        self, tmp_path: Path, seed: int
    ) -> None:
        old, new = b"o" * (8 * SECTOR), b"n" * (8 * SECTOR)
        lab = torn_lab(tmp_path, seed)
        try:
            ino = lab.create("f", old, fsync=True)
            lab.fsyncdir()
            lab.write("f", 0, new)
            loss = lab.cut()
            data = lab.read("f")
        finally:
            lab.close()
        sectors = _sectors(data)
        assert len(data) == len(old)
        assert set(sectors) == {old[:SECTOR], new[:SECTOR]}  # at least one of each
        assert loss.torn == (ino, 0, sectors.count(new[:SECTOR]), sectors.count(old[:SECTOR]))

    def test_the_same_seed_tears_the_same_way_and_seeds_differ(self, tmp_path: Path) -> None:
        def tear(seed: int, run: int) -> bytes:
            lab = Lab(tmp_path / f"b-{seed}-{run}", torn=True, seed=seed)
            try:
                lab.create("f", b"o" * (16 * SECTOR), fsync=True)
                lab.fsyncdir()
                lab.write("f", 0, b"n" * (16 * SECTOR))
                lab.cut()
                return lab.read("f")
            finally:
                lab.close()

        outcomes = [tear(seed, 0) for seed in range(6)]
        assert outcomes == [tear(seed, 1) for seed in range(6)]
        assert len(set(outcomes)) > 1

    @pytest.mark.parametrize("seed", range(6))
    def test_an_unaligned_write_tears_at_sector_boundaries(self, tmp_path: Path, seed: int) -> None:
        lab = torn_lab(tmp_path, seed)
        try:
            lab.create("f", b"o" * 2048, fsync=True)
            lab.fsyncdir()
            lab.write("f", 300, b"n" * 1000)  # pieces [300, 512), [512, 1024), [1024, 1300)
            loss = lab.cut()
            data = lab.read("f")
        finally:
            lab.close()
        pieces = [data[300:512], data[512:1024], data[1024:1300]]
        assert all(len(set(piece)) == 1 for piece in pieces)  # each piece whole or not at all
        kept = sum(piece[:1] == b"n" for piece in pieces)
        assert 1 <= kept <= 2
        assert data[:300] == b"o" * 300 and data[1300:] == b"o" * 748
        assert loss.torn is not None and loss.torn[1:] == (300, kept, 3 - kept)

    def test_a_write_within_one_sector_is_kept_whole_or_dropped(self, tmp_path: Path) -> None:
        outcomes = set()
        for seed in range(12):
            lab = torn_lab(tmp_path, seed)
            try:
                lab.create("f", b"o" * SECTOR, fsync=True)
                lab.fsyncdir()
                lab.write("f", 10, b"n" * 100)
                loss = lab.cut()
                data = lab.read("f")
            finally:
                lab.close()
            assert data in (b"o" * SECTOR, b"o" * 10 + b"n" * 100 + b"o" * 402)
            assert loss.torn is not None
            assert loss.torn[2:] == ((1, 0) if b"n" in data else (0, 1))
            outcomes.add(data)
        assert len(outcomes) == 2

    def test_only_the_last_write_tears(self, tmp_path: Path) -> None:
        for seed in range(6):
            lab = torn_lab(tmp_path, seed)
            try:
                lab.create("f", b"o" * (4 * SECTOR), fsync=True)
                lab.fsyncdir()
                lab.write("f", 0, b"1" * SECTOR)  # an earlier write: dropped whole
                lab.write("f", 2 * SECTOR, b"2" * (2 * SECTOR))
                lab.cut()
                data = lab.read("f")
            finally:
                lab.close()
            assert data[:SECTOR] == b"o" * SECTOR
            assert sorted(_sectors(data[2 * SECTOR :])) == [b"2" * SECTOR, b"o" * SECTOR]

    def test_a_torn_write_past_the_durable_end_leaves_whole_sectors_and_zeros(
        self, tmp_path: Path
    ) -> None:
        for seed in range(6):
            lab = torn_lab(tmp_path, seed)
            try:
                lab.create("f")
                lab.fsyncdir()
                lab.write("f", 0, b"n" * (2 * SECTOR))
                lab.cut()
                data = lab.read("f")
            finally:
                lab.close()
            assert data in (b"n" * SECTOR, bytes(SECTOR) + b"n" * SECTOR)

    def test_nothing_tears_after_an_fsync_or_without_torn(self, tmp_path: Path) -> None:
        lab = torn_lab(tmp_path, 3)
        try:
            lab.create("f", b"o" * (4 * SECTOR), fsync=True)
            lab.fsyncdir()
            lab.write("f", 0, b"n" * (4 * SECTOR))
            lab.fsync("f")
            loss = lab.cut()
            assert loss.torn is None
            assert lab.read("f") == b"n" * (4 * SECTOR)
        finally:
            lab.close()
        plain = Lab(tmp_path / "plain")
        try:
            plain.create("f", b"o" * SECTOR, fsync=True)
            plain.fsyncdir()
            plain.write("f", 0, b"n" * SECTOR)
            assert plain.cut().torn is None
            assert plain.read("f") == b"o" * SECTOR
        finally:
            plain.close()


# --- sync and pending -------------------------------------------------------------------------


class TestSyncAndPending:
    def test_sync_makes_everything_durable(self, lab: Lab) -> None:
        lab.mkdir("a")
        lab.mkdir("a/b")
        lab.create("a/b/f", b"deep")
        lab.create("top", b"t" * 5000)
        lab.link("top", "a/top-link")
        lab.mkdir("gone")
        lab.fsyncdir()
        lab.rmdir("gone")
        lab.create("x", b"x")
        lab.rename("x", "a/y")
        lab.truncate("top", 4097)
        before = lab.snap()
        lab.tree.sync()
        assert lab.tree.pending() == NO_LOSS
        assert backing_snapshot(lab.backing) == before
        lab.cut()
        assert lab.snap() == before
        assert lab.ino("top") == lab.ino("a/top-link")

    def test_pending_counts_what_a_cut_would_drop(self, lab: Lab) -> None:
        tree = lab.tree
        assert tree.pending() == NO_LOSS
        f = lab.create("f", b"x" * (PAGE + 1))  # two dirty pages, one new name
        assert tree.pending() == Loss(1, 2 * PAGE, 1, 1)
        lab.mkdir("d")
        assert tree.pending() == Loss(1, 2 * PAGE, 1, 2)
        lab.fsyncdir()
        assert tree.pending() == Loss(1, 2 * PAGE, 0, 0)  # d's empty listing is durable
        tree.fsync(f)
        assert tree.pending() == NO_LOSS
        lab.rename("f", "d/g")  # one entry gone from the root, one new in d
        assert tree.pending() == Loss(0, 0, 2, 2)
        lab.rename("d/g", "f")
        assert tree.pending() == NO_LOSS
        lab.truncate("f", 3 * PAGE)  # a size change is unsynced, with no dirty page
        assert tree.pending() == Loss(1, 0, 0, 0)
        lab.truncate("f", PAGE + 1)
        assert tree.pending() == NO_LOSS
        lab.truncate("f", 1)  # below the durable size
        lab.truncate("f", PAGE + 1)
        assert tree.pending() == Loss(1, 0, 0, 0)
        lab.write("f", 3 * PAGE, b"y")
        lab.rename("f", "h")
        assert tree.pending() == Loss(1, PAGE, 1, 2)
        assert lab.cut() == Loss(1, PAGE, 1, 2, None)
        assert lab.tree.pending() == NO_LOSS
        assert lab.snap() == {"d": {}, "f": b"x" * (PAGE + 1)}


# --- the hidden store -------------------------------------------------------------------------


class TestStore:
    def test_the_store_is_never_listed_nor_found(self, lab: Lab) -> None:
        lab.create("f", b"x", fsync=True)
        lab.fsyncdir()
        assert (lab.backing / STORE).is_dir()
        assert lab.names() == ["f"]
        with raises_errno(errno.ENOENT):
            lab.tree.lookup(ROOT, STORE.encode())
        lab.cut()
        assert lab.names() == ["f"]
        with raises_errno(errno.ENOENT):
            lab.tree.lookup(ROOT, STORE.encode())

    def test_the_store_cannot_be_made_linked_or_renamed_onto(self, lab: Lab) -> None:
        name = STORE.encode()
        ino = lab.create("f", b"x")
        lab.mkdir("d")
        with raises_errno(errno.EPERM):
            lab.tree.make(ROOT, name, FILE, 0, 0)
        with raises_errno(errno.EPERM):
            lab.tree.make(ROOT, name, DIR, 0, 0)
        with raises_errno(errno.EPERM):
            lab.tree.link(ino, ROOT, name)
        with raises_errno(errno.EPERM):
            lab.tree.rename(ROOT, b"f", ROOT, name, 0)
        with raises_errno(errno.EPERM):
            lab.tree.rename(ROOT, b"d", ROOT, name, RENAME_NOREPLACE)
        for call in (
            lambda: lab.tree.rename(ROOT, name, ROOT, b"x", 0),
            lambda: lab.tree.unlink(ROOT, name),
            lambda: lab.tree.rmdir(ROOT, name),
        ):
            with raises_errno(errno.ENOENT):
                call()
        assert lab.names() == ["d", "f"]
        assert (lab.backing / STORE).is_dir()

    def test_the_name_is_an_ordinary_one_below_the_root(self, lab: Lab) -> None:
        lab.mkdir("d")
        lab.create(f"d/{STORE}", b"mine", fsync=True)
        lab.fsyncdir("d", "")
        lab.cut()
        assert lab.snap() == {"d": {STORE: b"mine"}}


# --- errors -----------------------------------------------------------------------------------


class TestErrors:
    def test_enoent(self, lab: Lab) -> None:
        lab.mkdir("d")
        for call in (
            lambda: lab.tree.lookup(ROOT, b"nope"),
            lambda: lab.tree.node(999),
            lambda: lab.unlink("nope"),
            lambda: lab.rmdir("nope"),
            lambda: lab.rename("nope", "x"),
            lambda: lab.mkdir("nope/x"),
            lambda: lab.tree.fsync(999),
            lambda: lab.tree.read(999, 0, 1),
        ):
            with raises_errno(errno.ENOENT):
                call()

    def test_eexist(self, lab: Lab) -> None:
        lab.create("f")
        lab.mkdir("d")
        for call in (
            lambda: lab.create("f"),
            lambda: lab.mkdir("f"),
            lambda: lab.mkdir("d"),
            lambda: lab.link("f", "d"),
            lambda: lab.link("f", "f"),
        ):
            with raises_errno(errno.EEXIST):
                call()

    def test_rename_noreplace(self, lab: Lab) -> None:
        lab.create("a", b"A")
        lab.create("b", b"B")
        with raises_errno(errno.EEXIST):
            lab.rename("a", "b", RENAME_NOREPLACE)
        assert lab.snap() == {"a": b"A", "b": b"B"}
        lab.rename("a", "c", RENAME_NOREPLACE)
        assert lab.snap() == {"b": b"B", "c": b"A"}
        with raises_errno(errno.EINVAL):
            lab.rename("b", "c", RENAME_EXCHANGE)

    def test_enotempty(self, lab: Lab) -> None:
        lab.mkdir("d")
        lab.mkdir("e")
        lab.create("d/f")
        with raises_errno(errno.ENOTEMPTY):
            lab.rmdir("d")
        with raises_errno(errno.ENOTEMPTY):
            lab.rename("e", "d")
        assert lab.snap() == {"d": {"f": b""}, "e": {}}

    def test_eisdir_and_enotdir(self, lab: Lab) -> None:
        lab.mkdir("d")
        lab.create("f")
        with raises_errno(errno.EISDIR):
            lab.unlink("d")
        with raises_errno(errno.EISDIR):
            lab.rename("f", "d")
        with raises_errno(errno.ENOTDIR):
            lab.rmdir("f")
        with raises_errno(errno.ENOTDIR):
            lab.rename("d", "f")
        with raises_errno(errno.ENOTDIR):
            lab.mkdir("f/x")
        with raises_errno(errno.ENOTDIR):
            lab.tree.listing(lab.ino("f"))
        assert lab.snap() == {"d": {}, "f": b""}

    def test_einval_for_a_folder_moved_into_itself(self, lab: Lab) -> None:
        lab.mkdir("a")
        lab.mkdir("a/b")
        lab.mkdir("a/b/c")
        for new in ("a/x", "a/b/x", "a/b/c/x"):
            with raises_errno(errno.EINVAL):
                lab.rename("a", new)
        with raises_errno(errno.EINVAL):
            lab.rename("a/b", "a/b/c/b")
        lab.rename("a/b/c", "c")  # out of it is fine
        assert lab.snap() == {"a": {"b": {}}, "c": {}}

    def test_other_refusals(self, lab: Lab) -> None:
        lab.mkdir("d")
        ino = lab.create("f")
        with raises_errno(errno.EPERM):
            lab.link("d", "e")  # no hard link to a folder
        with raises_errno(errno.EINVAL):
            lab.rmdir("d/.")
        with raises_errno(errno.EINVAL):
            lab.tree.truncate(lab.ino("d"), 0)
        with raises_errno(errno.EINVAL):
            lab.tree.open(lab.ino("d"))
        with raises_errno(errno.ENAMETOOLONG):
            lab.tree.make(ROOT, b"x" * 256, FILE, 0, 0)
        lab.tree.make(ROOT, b"x" * 255, FILE, 0, 0)
        with raises_errno(errno.ENAMETOOLONG):
            lab.tree.link(ino, ROOT, b"y" * 256)

    def test_dot_and_dotdot(self, lab: Lab) -> None:
        lab.mkdir("d")
        d = lab.ino("d")
        assert lab.tree.lookup(d, b".").ino == d
        assert lab.tree.lookup(d, b"..").ino == ROOT
        lab.mkdir("e")
        lab.rename("d", "e/d")
        assert lab.tree.lookup(d, b"..").ino == lab.ino("e")


# --- bugs found here (xfail until tree.py is fixed) -------------------------------------------


class TestKnownBugs:
    @pytest.mark.skipif(os.geteuid() == 0, reason="root may open and write any file")
    @pytest.mark.xfail(
        strict=True,
        raises=PermissionError,
        reason="the store file is opened O_RDWR (EACCES once fsync chmods it read-only)",
    )
    def test_a_read_only_file_can_be_read(self, lab: Lab) -> None:
        ino = lab.create("f", b"data", fsync=True)
        lab.fsyncdir()
        lab.tree.set_attrs(ino, mode=0o444)
        lab.tree.fsync(ino)  # chmods the store file, then closes it
        assert lab.read("f") == b"data"

    @pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
    @pytest.mark.xfail(
        strict=True,
        raises=PermissionError,
        reason="_place makes a read-only folder with its mode, then links into it",
    )
    def test_a_read_only_folder_can_be_made_durable(self, lab: Lab) -> None:
        lab.mkdir("d")
        lab.create("d/f", b"x", fsync=True)
        lab.tree.set_attrs(lab.ino("d"), mode=0o555)
        lab.fsyncdir("d", "")
        lab.cut()
        assert lab.snap() == {"d": {"f": b"x"}}

    @pytest.mark.xfail(
        strict=True,
        raises=FileNotFoundError,
        reason="sync() fsyncs a file _maybe_free already freed (its store file is gone)",
    )
    def test_sync_after_an_unsynced_file_was_removed(self, lab: Lab) -> None:
        lab.create("tmp", b"scratch, never fsynced")
        lab.unlink("tmp")
        lab.tree.sync()  # raises FileNotFoundError: a clean unmount would fail here
        assert lab.tree.pending() == NO_LOSS

    @pytest.mark.xfail(strict=True, reason="pending() counts a freed file as unsynced")
    def test_pending_forgets_a_removed_file(self, lab: Lab) -> None:
        lab.create("tmp", b"scratch")
        lab.fsyncdir()
        lab.unlink("tmp")
        lab.fsyncdir()
        assert lab.tree.pending() == NO_LOSS  # is Loss(files=1, ...)

    @pytest.mark.xfail(strict=True, reason="_place rmtree's a placed folder still being moved")
    def test_two_durable_folders_swapping_names(self, lab: Lab) -> None:
        lab.mkdir("a")
        lab.mkdir("b")
        lab.create("a/fa", b"A", fsync=True)
        lab.create("b/fb", b"B", fsync=True)
        lab.fsyncdir("a", "b", "")
        lab.rename("a", "t")
        lab.rename("b", "a")
        lab.rename("t", "b")
        lab.fsyncdir()
        lab.cut()
        assert lab.snap() == {"a": {"fb": b"B"}, "b": {"fa": b"A"}}  # is {"b": {"fb": b"B"}}

    @pytest.mark.xfail(strict=True, reason="_place rmtree's a placed folder still being moved")
    def test_a_durable_folder_renamed_and_a_file_taking_its_name(self, lab: Lab) -> None:
        lab.mkdir("n")
        lab.create("n/inside", b"I", fsync=True)
        lab.create("f", b"F", fsync=True)
        lab.fsyncdir("n", "")
        lab.rename("n", "t")
        lab.rename("f", "n")
        lab.rename("t", "m")
        lab.fsyncdir()
        lab.cut()
        assert lab.snap() == {"m": {"inside": b"I"}, "n": b"F"}

    @pytest.mark.xfail(
        strict=True,
        raises=FileNotFoundError,
        reason="a folder under an rmtree'd one keeps a stale `placed`",
    )
    def test_a_folder_left_placed_under_a_removed_one(self, lab: Lab) -> None:
        lab.mkdir("A")
        lab.mkdir("A/D")
        lab.fsyncdir("A", "")
        lab.mkdir("X")
        lab.rename("A", "X/A")
        lab.fsyncdir()  # A leaves the backing (rmtree), D.placed still says (A, "D")
        lab.rename("X/A/D", "D")
        lab.fsyncdir("X/A")  # A is not placed: only its durable listing changes
        lab.fsyncdir("X")  # A is made again, without D; D.placed now looks valid
        lab.fsyncdir()  # raises FileNotFoundError: it renames X/A/D, which is not there
        lab.cut()
        assert lab.snap() == {"D": {}, "X": {"A": {}}}

    @pytest.mark.xfail(
        strict=True, reason="_place moves a folder out of a newer durable listing into an older one"
    )
    def test_a_careful_writer_keeps_a_folder_moved_out_of_a_moved_folder(self, lab: Lab) -> None:
        lab.mkdir("a")
        lab.mkdir("b")
        lab.mkdir("a/x")
        lab.mkdir("a/x/y")
        lab.create("a/x/y/f", b"F", fsync=True)
        lab.tree.sync()
        lab.rename("a/x", "b/x")
        lab.rename("b/x/y", "a/y")
        lab.fsyncdir("a", "b", "b/x")  # every folder that changed, each fsynced
        lab.cut()
        assert lab.snap() == {"a": {"y": {"f": b"F"}}, "b": {"x": {}}}  # is {"a": {}, ...}

    @pytest.mark.xfail(
        strict=True, reason="_place moves a folder out of a newer durable listing into an older one"
    )
    def test_sync_keeps_a_folder_moved_out_of_a_moved_folder(self, lab: Lab) -> None:
        lab.mkdir("a")
        lab.mkdir("b")
        lab.mkdir("a/x")
        lab.mkdir("a/x/y")
        lab.tree.sync()
        lab.rename("a/x", "b/x")
        lab.rename("b/x/y", "a/y")
        lab.tree.sync()
        assert lab.tree.pending() == NO_LOSS  # is Loss(0, 0, 1, 1): a's entry y
        assert backing_snapshot(lab.backing) == {"a": {"y": {}}, "b": {"x": {}}}

    @pytest.mark.xfail(
        strict=True, reason="_place sets `placed` after the children: one moved in is missed"
    )
    def test_a_folder_moved_in_with_its_old_parent_is_not_made_twice(self, lab: Lab) -> None:
        lab.mkdir("q")
        lab.mkdir("q/c")
        lab.create("q/c/f", b"F", fsync=True)
        lab.tree.sync()
        lab.mkdir("n")
        lab.rename("q", "n/q")
        lab.rename("n/q/c", "n/c")
        lab.fsyncdir("n")  # n is not placed yet: its durable listing is q and c
        lab.fsyncdir()  # n is made: q moves in with c inside it, then c is made again
        lab.cut()
        assert lab.snap() == {"n": {"c": {"f": b"F"}, "q": {}}}  # is also n/q/c/f

    @pytest.mark.xfail(
        strict=True,
        raises=RecursionError,
        reason="_place recurses forever through a cycle of durable listings",
    )
    def test_durable_listings_that_form_a_cycle(self, lab: Lab) -> None:
        lab.mkdir("D")
        lab.mkdir("D/E")
        lab.fsyncdir("D")  # D's durable listing: E
        lab.rename("D/E", "E")
        lab.rename("D", "E/D")
        lab.fsyncdir("E")  # E's durable listing: D
        lab.fsyncdir()  # places E, then D in it, then E in D, ...
        lab.cut()
        assert lab.snap() == {"E": {"D": {}}}

    @pytest.mark.xfail(
        strict=True,
        raises=OSError,
        reason="_place renames a placed folder into its own placed subtree (EINVAL)",
    )
    def test_a_folder_made_durable_inside_one_durably_inside_it(self, lab: Lab) -> None:
        lab.mkdir("A")
        lab.mkdir("A/B")
        lab.fsyncdir("A", "")
        lab.rename("A/B", "B")
        lab.rename("A", "B/A")
        lab.fsyncdir("B")  # B is durably in A, and now lists A: raises EINVAL
        lab.cut()
        assert lab.snap() in ({"A": {"B": {}}}, {"B": {"A": {}}})


# --- the differential test --------------------------------------------------------------------


class KnownBug(Exception):
    """A step the tree is known to get wrong (TestKnownBugs): skipped in the random runs."""


@dataclass
class RefFile:
    data: bytearray = field(default_factory=bytearray)  # the current bytes
    durable: bytes = b""  # the bytes the last fsync kept
    valid: int = 0  # the lowest size a truncation left since that fsync
    dirty: set[int] = field(default_factory=set)  # pages written since (and not cut off)

    @property
    def unsynced(self) -> bool:
        return bool(self.dirty) or self.valid < len(self.durable) or self.size != len(self.durable)

    @property
    def size(self) -> int:
        return len(self.data)

    def write(self, offset: int, data: bytes) -> None:
        if offset > self.size:
            self.data.extend(bytes(offset - self.size))
        self.data[offset : offset + len(data)] = data
        self.dirty.update(range(offset // PAGE, (offset + len(data) - 1) // PAGE + 1))

    def truncate(self, size: int) -> None:
        if size < self.size:
            del self.data[size:]
            self.valid = min(self.valid, size)
            self.dirty = {i for i in self.dirty if i * PAGE < size}
        else:
            self.data.extend(bytes(size - self.size))

    def fsync(self) -> None:
        self.durable = bytes(self.data)
        self.valid = len(self.durable)
        self.dirty = set()


Place = tuple[int, bytes]


@dataclass
class Ref:
    """The file system as the tree's docstring states it, in dicts keyed by the tree's inode
    numbers: every folder's current and durable listing, every file's current and durable
    bytes. A folder is in the backing folder ("placed") when it is the root or its place is
    an entry of a placed folder's durable listing. A folder has one place: when a durable
    listing that is placed adds it, it moves there and leaves the listing it was in; when a
    placed listing drops it, it and all under it leave the backing folder (their durable
    listings are kept, to be placed again).

    Where the tree is known to go wrong (TestKnownBugs) the model raises KnownBug and the step
    is skipped in both; `shadow` and `stamp` are kept only to see those cases coming."""

    dirs: dict[int, dict[bytes, int]] = field(default_factory=lambda: {ROOT: {}})
    durable: dict[int, dict[bytes, int]] = field(default_factory=lambda: {ROOT: {}})
    parent: dict[int, int] = field(default_factory=lambda: {ROOT: ROOT})
    home: dict[int, Place | None] = field(default_factory=lambda: {ROOT: (ROOT, b"")})
    # what the tree's `placed` says: like `home`, but only the folder an rmtree removes is
    # cleared, not the ones under it (a known bug, detected to skip the steps it breaks)
    shadow: dict[int, Place | None] = field(default_factory=lambda: {ROOT: (ROOT, b"")})
    files: dict[int, RefFile] = field(default_factory=dict)
    # when each durable entry was last fsynced (its folder's fsync count at the time)
    stamp: dict[Place, int] = field(default_factory=dict)
    clock: int = 0

    def is_dir(self, ino: int) -> bool:
        return ino in self.dirs

    # --- the current namespace -----------------------------------------------------------

    def walk(self) -> Iterator[tuple[str, int, int, bytes]]:
        """(path, parent, ino, name) of every current entry, breadth first, sorted."""
        todo: deque[tuple[str, int]] = deque([("", ROOT)])
        while todo:
            path, folder = todo.popleft()
            for name, ino in sorted(self.dirs[folder].items()):
                child = f"{path}/{name.decode()}"
                yield child, folder, ino, name
                if self.is_dir(ino):
                    todo.append((child, ino))

    def current_dirs(self) -> list[int]:
        return [ROOT] + [ino for _, _, ino, _ in self.walk() if self.is_dir(ino)]

    def current_files(self) -> list[int]:
        seen: list[int] = []
        for _, _, ino, _ in self.walk():
            if not self.is_dir(ino) and ino not in seen:
                seen.append(ino)
        return seen

    def within(self, folder: int, ancestor: int) -> bool:
        while True:
            if folder == ancestor:
                return True
            if folder == ROOT:
                return False
            folder = self.parent[folder]

    def make_error(self, parent: int, name: bytes) -> int | None:
        return errno.EEXIST if name in self.dirs[parent] else None

    def make(self, parent: int, name: bytes, ino: int, is_dir: bool) -> None:
        self.dirs[parent][name] = ino
        if is_dir:
            self.dirs[ino], self.durable[ino] = {}, {}
            self.parent[ino] = parent
            self.home[ino] = self.shadow[ino] = None
        else:
            self.files[ino] = RefFile()

    def link_error(self, ino: int, parent: int, name: bytes) -> int | None:
        return errno.EEXIST if name in self.dirs[parent] else None

    def link(self, ino: int, parent: int, name: bytes) -> None:
        self.dirs[parent][name] = ino

    def unlink_error(self, parent: int, name: bytes) -> int | None:
        ino = self.dirs[parent].get(name)
        if ino is None:
            return errno.ENOENT
        return errno.EISDIR if self.is_dir(ino) else None

    def unlink(self, parent: int, name: bytes) -> None:
        del self.dirs[parent][name]

    def rmdir_error(self, parent: int, name: bytes) -> int | None:
        ino = self.dirs[parent].get(name)
        if ino is None:
            return errno.ENOENT
        if not self.is_dir(ino):
            return errno.ENOTDIR
        return errno.ENOTEMPTY if self.dirs[ino] else None

    rmdir = unlink

    def rename_error(self, src: int, old: bytes, dst: int, new: bytes, flags: int) -> int | None:
        ino = self.dirs[src].get(old)
        if ino is None:
            return errno.ENOENT
        replaced = self.dirs[dst].get(new)
        if replaced == ino:
            return None
        if replaced is not None and flags & RENAME_NOREPLACE:
            return errno.EEXIST
        if self.is_dir(ino) and self.within(dst, ino):
            return errno.EINVAL
        if replaced is not None:
            if self.is_dir(ino) and not self.is_dir(replaced):
                return errno.ENOTDIR
            if not self.is_dir(ino) and self.is_dir(replaced):
                return errno.EISDIR
            if self.is_dir(replaced) and self.dirs[replaced]:
                return errno.ENOTEMPTY
        return None

    def rename(self, src: int, old: bytes, dst: int, new: bytes) -> None:
        ino = self.dirs[src][old]
        if self.dirs[dst].get(new) == ino:
            return
        del self.dirs[src][old]
        self.dirs[dst][new] = ino
        if self.is_dir(ino):
            self.parent[ino] = dst

    # --- durability ----------------------------------------------------------------------

    def placed(self, folder: int) -> bool:
        return self.home[folder] is not None

    def chain(self, folder: int) -> set[int]:
        """The folder and the placed folders above it."""
        out = {folder}
        while folder != ROOT:
            place = self.home[folder]
            assert place is not None
            folder = place[0]
            out.add(folder)
        return out

    def tree_thinks_placed(self, folder: int) -> bool:
        for _ in range(1000):
            if folder == ROOT:
                return True
            place = self.shadow[folder]
            if place is None:
                return False
            folder = place[0]
        raise AssertionError("a cycle of placements")

    def fsyncdir(self, folder: int) -> None:
        old, new = self.durable[folder], dict(self.dirs[folder])
        self.durable[folder] = new
        self.clock += 1
        self.stamp.update({(folder, name): self.clock for name in new})
        if not self.placed(folder):
            return
        added = [(name, ino) for name, ino in new.items() if old.get(name) != ino]
        gone = [(name, ino) for name, ino in old.items() if new.get(name) != ino]
        order = {ino: k for k, (_, ino) in enumerate(added)}
        for k, (name, _) in enumerate(added):
            there = old.get(name)
            if there is not None and self.is_dir(there) and order.get(there, -1) > k:
                raise KnownBug("a name placed before the folder it held moves away")
        for name, ino in gone:
            if self.is_dir(ino) and self.home[ino] == (folder, name) and ino not in new.values():
                self.shadow[ino] = None
                self.unplace(ino)
        for name, ino in added:
            if self.is_dir(ino):
                self.place(ino, folder, name, self.chain(folder))

    def unplace(self, folder: int) -> None:
        for name, ino in self.durable[folder].items():
            if self.is_dir(ino) and self.home[ino] == (folder, name):
                self.unplace(ino)
        self.home[folder] = None

    def place(self, folder: int, parent: int, name: bytes, above: set[int]) -> None:
        if folder in above:
            raise KnownBug("a folder placed inside itself")
        if self.tree_thinks_placed(folder) and not self.placed(folder):
            raise KnownBug("a stale placement")
        if self.placed(folder) and not self.tree_thinks_placed(folder):
            raise KnownBug("a folder moved in with a folder being made is not seen there")
        if self.placed(folder):
            place = self.home[folder]
            assert place is not None
            if place != (parent, name) and self.durable[place[0]].get(place[1]) == folder:
                del self.durable[place[0]][place[1]]
        else:
            for child_name, child in list(self.durable[folder].items()):
                if not self.is_dir(child):
                    continue
                there = self.home[child]
                if there is not None and self.stamp[there] > self.stamp[(folder, child_name)]:
                    raise KnownBug("an older durable listing takes a folder from a newer one")
                self.place(child, folder, child_name, above | {folder})
        self.home[folder] = self.shadow[folder] = (parent, name)

    def fsync(self, ino: int) -> None:
        self.files[ino].fsync()

    def freed(self, ino: int) -> bool:
        """A file without a current name or a durable one (the tree forgets it)."""
        listings = [*self.dirs.values(), *self.durable.values()]
        return all(ino not in listing.values() for listing in listings)

    def sync(self) -> None:
        for ino, file in self.files.items():
            if self.freed(ino):
                if file.size != len(file.durable) or file.valid < len(file.durable):
                    raise KnownBug("sync fsyncs a freed file")
            else:
                file.fsync()
        todo: deque[int] = deque([ROOT])
        while todo:
            folder = todo.popleft()
            if self.durable[folder] != self.dirs[folder]:
                self.fsyncdir(folder)
            todo.extend(ino for ino in self.dirs[folder].values() if self.is_dir(ino))

    def pending(self) -> tuple[Loss, bool]:
        """What a cut would drop, and whether the files count meets the freed-file bug."""
        live = [f for ino, f in self.files.items() if not self.freed(ino)]
        files = [f for f in live if f.unsynced]
        buggy = any(
            f.size != len(f.durable) or f.valid < len(f.durable)
            for ino, f in self.files.items()
            if self.freed(ino)
        )
        folders = [d for d in self.dirs if self.durable[d] != self.dirs[d]]
        entries = sum(
            len(set(self.durable[d].items()) ^ set(self.dirs[d].items())) for d in folders
        )
        loss = Loss(len(files), sum(len(f.dirty) * PAGE for f in files), len(folders), entries)
        return loss, buggy

    # --- what a reload should show -------------------------------------------------------

    def durable_view(self, folder: int = ROOT, depth: int = 0) -> dict[bytes, object]:
        assert depth < 50
        out: dict[bytes, object] = {}
        for name, ino in self.durable[folder].items():
            if self.is_dir(ino):
                assert self.home[ino] == (folder, name), "the model lost track of a folder"
                out[name] = self.durable_view(ino, depth + 1)
            else:
                out[name] = ino
        return out

    def current_view(self, folder: int = ROOT) -> dict[bytes, object]:
        return {
            name: self.current_view(ino) if self.is_dir(ino) else ino
            for name, ino in self.dirs[folder].items()
        }


def tree_view(tree: LossyTree, folder: int = ROOT) -> dict[bytes, object]:
    """A tree's current listing in the model's shape (a file is its inode number)."""
    return {
        name: tree_view(tree, node.ino) if node.is_dir else node.ino
        for name, node in tree.listing(folder)
    }


def canonical(view: dict[bytes, object]) -> tuple[dict[bytes, object], dict[int, int]]:
    """A view with each file's number replaced by the order its first name comes in (so two
    views match when their links match), and that renumbering."""
    labels: dict[int, int] = {}

    def walk(folder: dict[bytes, object]) -> dict[bytes, object]:
        out: dict[bytes, object] = {}
        for name in sorted(folder):
            item = folder[name]
            if isinstance(item, dict):
                out[name] = walk(item)
            else:
                assert isinstance(item, int)
                out[name] = labels.setdefault(item, len(labels))
        return out

    return walk(view), labels


NAMES = [b"a", b"b", b"c"]
_sel = st.integers(0, 15)
_name = st.sampled_from(NAMES)
_offset = st.integers(0, 2 * PAGE + 200)
_MKDIR = st.tuples(st.just("mkdir"), _sel, _name)
_CREATE = st.tuples(st.just("create"), _sel, _name)
_WRITE = st.tuples(st.just("write"), _sel, _offset, st.integers(1, 700), st.integers(0, 255))
_flags = st.sampled_from([0, 0, 0, RENAME_NOREPLACE])
_RENAME = st.tuples(st.just("rename"), _sel, _name, _sel, _name, _flags)
_MOVE = st.tuples(st.just("move"), _sel, _sel, _name, _flags)
_FSYNC = st.tuples(st.just("fsync"), _sel)
_FSYNCDIR = st.tuples(st.just("fsyncdir"), _sel, st.sampled_from([False, False, False, True]))
# duplicated branches weigh what makes interesting states: folders, moves and fsyncs
OPS = st.one_of(
    _MKDIR,
    _MKDIR,
    _CREATE,
    _CREATE,
    _WRITE,
    _WRITE,
    st.tuples(st.just("truncate"), _sel, _offset),
    _RENAME,
    _MOVE,
    _MOVE,
    _MOVE,
    st.tuples(st.just("link"), _sel, _sel, _name),
    st.tuples(st.just("unlink"), _sel, _name),
    st.tuples(st.just("rmdir"), _sel, _name),
    _FSYNC,
    _FSYNC,
    _FSYNCDIR,
    _FSYNCDIR,
    _FSYNCDIR,
    _FSYNCDIR,
    st.tuples(st.just("read"), _sel, _offset, st.integers(0, PAGE + 100)),
    st.tuples(st.just("sync")),
)
# the namespace alone, to reach folder moves, removals and re-placements more often
FOLDER_OPS = st.one_of(
    _MKDIR,
    _MKDIR,
    _MKDIR,
    _CREATE,
    _RENAME,
    _MOVE,
    _MOVE,
    _MOVE,
    _MOVE,
    _MOVE,
    st.tuples(st.just("rmdir"), _sel, _name),
    _FSYNCDIR,
    _FSYNCDIR,
    _FSYNCDIR,
    _FSYNCDIR,
    _FSYNCDIR,
    st.tuples(st.just("sync")),
)
# a start that is already durable: folders a, b, a/a and b/c, files c and a/b (linked as b/a)
PREFIX: list[tuple] = [
    ("mkdir", 0, b"a"),
    ("mkdir", 0, b"b"),
    ("mkdir", 1, b"a"),
    ("mkdir", 2, b"c"),
    ("create", 0, b"c"),
    ("create", 1, b"b"),
    ("write", 0, 0, 5000, 1),
    ("write", 1, 100, 300, 2),
    ("link", 1, 2, b"a"),
    ("sync",),
]


def _errno_of(call: Callable[[], object]) -> int | None:
    try:
        call()
    except OSError as exc:
        return exc.errno
    return None


def _check_current(tree: LossyTree, ref: Ref) -> None:
    assert tree_view(tree) == ref.current_view()
    for ino in ref.current_files():
        file = ref.files[ino]
        assert tree.node(ino).size == file.size
        assert tree.read(ino, 0, file.size + PAGE) == bytes(file.data)


def _step(tree: LossyTree, ref: Ref, op: tuple) -> Ref:
    """Apply one operation to both; answer the model after it."""
    kind = op[0]
    dirs, files = ref.current_dirs(), ref.current_files()

    def folder(sel: int) -> int:
        return dirs[sel % len(dirs)]

    if kind in ("mkdir", "create"):
        parent, name = folder(op[1]), op[2]
        expected = ref.make_error(parent, name)
        mode = DIR if kind == "mkdir" else FILE
        try:
            node = tree.make(parent, name, mode, 0, 0)
        except OSError as exc:
            assert exc.errno == expected
        else:
            assert expected is None
            ref.make(parent, name, node.ino, kind == "mkdir")
        return ref
    if kind == "unlink" or kind == "rmdir":
        parent, name = folder(op[1]), op[2]
        expected = getattr(ref, f"{kind}_error")(parent, name)
        assert _errno_of(lambda: getattr(tree, kind)(parent, name)) == expected
        if expected is None:
            getattr(ref, kind)(parent, name)
        return ref
    if kind in ("rename", "move"):
        if kind == "rename":  # any name: often none there
            src, old, dst, new, flags = folder(op[1]), op[2], folder(op[3]), op[4], op[5]
        else:  # an entry that is there
            entries = [(parent, name) for _, parent, _, name in ref.walk()]
            if not entries:
                return ref
            (src, old), dst, new, flags = entries[op[1] % len(entries)], folder(op[2]), op[3], op[4]
        expected = ref.rename_error(src, old, dst, new, flags)
        assert _errno_of(lambda: tree.rename(src, old, dst, new, flags)) == expected
        if expected is None:
            ref.rename(src, old, dst, new)
        return ref
    if kind == "fsyncdir":
        everyone = sorted(ref.dirs) if op[2] else dirs  # with a removed folder now and then
        target = everyone[op[1] % len(everyone)]
        trial = copy.deepcopy(ref)
        try:
            trial.fsyncdir(target)
        except KnownBug as bug:
            event(f"skipped: {bug}")
            return ref
        tree.fsyncdir(target)
        return trial
    if kind == "sync":
        trial = copy.deepcopy(ref)
        try:
            trial.sync()
        except KnownBug as bug:
            event(f"skipped sync: {bug}")
            return ref
        tree.sync()
        assert canonical(trial.durable_view()) == canonical(trial.current_view())
        return trial
    if not files:
        return ref
    ino = files[op[1] % len(files)]
    if kind == "link":
        parent, name = folder(op[2]), op[3]
        expected = ref.link_error(ino, parent, name)
        assert _errno_of(lambda: tree.link(ino, parent, name)) == expected
        if expected is None:
            ref.link(ino, parent, name)
    elif kind == "write":
        offset, size, fill = op[2], op[3], op[4]
        data = bytes((fill + k) % 256 for k in range(size))
        assert tree.write(ino, offset, data) == size
        ref.files[ino].write(offset, data)
    elif kind == "truncate":
        tree.truncate(ino, op[2])
        ref.files[ino].truncate(op[2])
    elif kind == "fsync":
        tree.fsync(ino)
        ref.fsync(ino)
    elif kind == "read":
        offset, size = op[2], op[3]
        assert tree.read(ino, offset, size) == bytes(ref.files[ino].data[offset : offset + size])
    return ref


def _run(tmp_path_factory: pytest.TempPathFactory, prefix: bool, ops: list[tuple]) -> None:
    """Run the operations on a new tree and on the model, then cut, reload and compare."""
    backing = tmp_path_factory.mktemp("lossy") / "backing"
    tree = LossyTree(backing)
    tree.load()
    ref = Ref()
    after: LossyTree | None = None
    try:
        if prefix:
            for op in PREFIX:
                ref = _step(tree, ref, op)
            assert tree_view(tree) == {
                b"a": {b"a": {}, b"b": 7},
                b"b": {b"a": 7, b"c": {}},
                b"c": 6,
            }
            assert tree.pending() == NO_LOSS
        for op in ops:
            ref = _step(tree, ref, op)
            _check_current(tree, ref)
        expected, freed_bug = ref.pending()
        pending = tree.pending()
        if freed_bug:
            event("pending files not compared: a freed file is counted")
            assert replace(pending, files=expected.files) == expected
        else:
            assert pending == expected
        assert tree.cut() == pending
        after = LossyTree(backing)
        after.load()
        assert after.pending() == NO_LOSS
        want, labels = canonical(ref.durable_view())
        got, got_labels = canonical(tree_view(after))
        assert got == want
        by_label = {label: ino for ino, label in got_labels.items()}
        for ino, label in labels.items():
            kept = by_label[label]
            assert after.read(kept, 0, 1 << 20) == ref.files[ino].durable
    finally:
        close_all(tree)
        if after is not None:
            close_all(after)


@settings(max_examples=200, deadline=None)
@given(prefix=st.booleans(), ops=st.lists(OPS, min_size=10, max_size=60))
def test_the_tree_keeps_what_the_model_says_is_durable(
    tmp_path_factory: pytest.TempPathFactory, prefix: bool, ops: list[tuple]
) -> None:
    _run(tmp_path_factory, prefix, ops)


@settings(max_examples=200, deadline=None)
@given(prefix=st.booleans(), ops=st.lists(FOLDER_OPS, min_size=10, max_size=60))
def test_folders_moved_and_removed_keep_what_the_model_says(
    tmp_path_factory: pytest.TempPathFactory, prefix: bool, ops: list[tuple]
) -> None:
    _run(tmp_path_factory, prefix, ops)
