"""A FUSE file system that forgets every write not yet synced, for kla's crash tests (tests/it/crash.rs).

    lazyfs.py BACKING MOUNTPOINT [--fail-flag PATH] [--fail-dir ledger]

MOUNTPOINT shows the files of BACKING. Writes and truncations are held in this process's memory, per file, in
4 KiB pages (the "page cache"); `fsync`/`fdatasync` of a file writes its pending pages (and its size) to BACKING.
Nothing else ever does: closing a file does not, another file's sync does not. So BACKING holds exactly what was
synced, and killing this process (SIGKILL) is a power cut: every write not yet synced is gone, as with lazyfs or
SQLite's crash-test VFS. The model covers file data and sizes only: creating, renaming and removing files and
directories go to BACKING at once (a journaling file system's metadata; kla's ledger also syncs its directory).

While the file at `--fail-flag` exists, writes, truncations and syncs of files in a directory named `--fail-dir`
(default `ledger`, kla's `<data-dir>/ledger/`) fail with EIO (a disk that refuses the ledger's appends while the store keeps working).

Reading `MOUNTPOINT/.lazyfs-pending` (a file no listing shows) answers what a power cut would lose now: a line
`files=N pages=M`, then one line per file with pending pages: `<pages> <path>`.

Prints `ready` once mounted. Runs single-threaded: one request at a time, so no locking is needed.
"""

import errno
import os
import stat
import sys

import mfusepy as fuse

PAGE = 4096
CONTROL = "/.lazyfs-pending"


class File:
    """The pending (unsynced) state of one file: its logical size and the pages written since the last sync."""

    def __init__(self, durable_size):
        self.size = durable_size
        # Backing bytes at or past this offset are stale (a truncation not yet synced): they read as zeros.
        self.floor = durable_size
        self.pages = {}


class LazyFs(fuse.Operations):
    use_ns = True

    def __init__(self, root, fail_flag=None, fail_dir="ledger"):
        self.root = root
        self.fail_flag = fail_flag
        self.fail_dir = fail_dir
        self.files = {}

    # -- helpers -----------------------------------------------------------------------------------------------

    def _real(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _failing(self, path):
        if self.fail_flag is None or self.fail_dir not in path.split("/")[:-1]:
            return False
        return os.path.exists(self.fail_flag)

    def _state(self, path):
        st = self.files.get(path)
        if st is None:
            st = File(os.stat(self._real(path)).st_size)
            self.files[path] = st
        return st

    def _durable_page(self, path, st, n):
        """Page `n` as the backing file holds it, with bytes past `floor` (and past its end) as zeros."""
        start = n * PAGE
        data = b""
        if start < st.floor:
            with open(self._real(path), "rb") as f:
                f.seek(start)
                data = f.read(min(PAGE, st.floor - start))
        return bytearray(data.ljust(PAGE, b"\0"))

    def _page(self, path, st, n):
        page = st.pages.get(n)
        if page is None:
            page = self._durable_page(path, st, n)
        return page

    def _sync(self, path):
        st = self.files.get(path)
        if st is None:
            return
        fd = os.open(self._real(path), os.O_WRONLY)
        try:
            if st.floor < os.fstat(fd).st_size:
                os.ftruncate(fd, st.floor)
            for n in sorted(st.pages):
                start = n * PAGE
                if start >= st.size:
                    continue
                os.pwrite(fd, bytes(st.pages[n][: min(PAGE, st.size - start)]), start)
            os.ftruncate(fd, st.size)
            # No fsync of the backing file: this process's death is the power cut the tests model, and the
            # backing file system outlives it.
        finally:
            os.close(fd)
        del self.files[path]

    def _pending_text(self):
        lines = [f"files={len(self.files)} pages={sum(len(st.pages) for st in self.files.values())}"]
        lines += [f"{len(st.pages)} {path}" for path, st in sorted(self.files.items())]
        return ("\n".join(lines) + "\n").encode()

    # -- metadata: straight to the backing directory -----------------------------------------------------------

    def getattr(self, path, fh=None):
        if path == CONTROL:
            # A size larger than the text: the kernel reads until the short read that ends it.
            return {"st_mode": stat.S_IFREG | 0o444, "st_nlink": 1, "st_size": 1 << 20}
        s = os.lstat(self._real(path))
        attrs = {k: getattr(s, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_ino", "st_blksize")}
        attrs.update(st_atime=s.st_atime_ns, st_mtime=s.st_mtime_ns, st_ctime=s.st_ctime_ns)
        st = self.files.get(path)
        attrs["st_size"] = st.size if st is not None else s.st_size
        attrs["st_blocks"] = (attrs["st_size"] + 511) // 512
        return attrs

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._real(path))

    def statfs(self, path):
        s = os.statvfs(self._real(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files", "f_flag",
                "f_frsize", "f_namemax")
        return {k: getattr(s, k) for k in keys}

    def access(self, path, amode):
        if not os.access(self._real(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def chmod(self, path, mode):
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path, uid, gid):
        os.chown(self._real(path), uid, gid)
        return 0

    def utimens(self, path, times=None):
        os.utime(self._real(path), ns=times)
        return 0

    def mkdir(self, path, mode):
        os.mkdir(self._real(path), mode)
        return 0

    def rmdir(self, path):
        os.rmdir(self._real(path))
        return 0

    def unlink(self, path):
        os.unlink(self._real(path))
        self.files.pop(path, None)
        return 0

    def rename(self, old, new):
        os.rename(self._real(old), self._real(new))
        self.files.pop(new, None)
        if old in self.files:
            self.files[new] = self.files.pop(old)
        return 0

    def create(self, path, mode, fi=None):
        fd = os.open(self._real(path), os.O_WRONLY | os.O_CREAT, mode)
        os.close(fd)
        return 0

    def open(self, path, flags):
        if path == CONTROL:
            return 0
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return 0

    def fsyncdir(self, path, datasync, fh):
        return 0

    # -- data: held until synced -------------------------------------------------------------------------------

    def read(self, path, size, offset, fh):
        if path == CONTROL:
            return self._pending_text()[offset : offset + size]
        st = self.files.get(path)
        if st is None:
            with open(self._real(path), "rb") as f:
                f.seek(offset)
                return f.read(size)
        end = min(offset + size, st.size)
        out = bytearray()
        pos = offset
        while pos < end:
            n, within = divmod(pos, PAGE)
            take = min(PAGE - within, end - pos)
            out += self._page(path, st, n)[within : within + take]
            pos += take
        return bytes(out)

    def write(self, path, data, offset, fh):
        if self._failing(path):
            raise fuse.FuseOSError(errno.EIO)
        st = self._state(path)
        pos, done = offset, 0
        while done < len(data):
            n, within = divmod(pos, PAGE)
            take = min(PAGE - within, len(data) - done)
            page = self._page(path, st, n)
            page[within : within + take] = data[done : done + take]
            st.pages[n] = page
            pos += take
            done += take
        st.size = max(st.size, offset + len(data))
        return len(data)

    def truncate(self, path, length, fh=None):
        if self._failing(path):
            raise fuse.FuseOSError(errno.EIO)
        st = self._state(path)
        if length < st.size:
            n, within = divmod(length, PAGE)
            if within:
                page = self._page(path, st, n)
                page[within:] = bytes(PAGE - within)
                st.pages[n] = page
                n += 1
            st.pages = {k: v for k, v in st.pages.items() if k < n}
            st.floor = min(st.floor, length)
        st.size = length
        return 0

    def fsync(self, path, datasync, fh):
        if self._failing(path):
            raise fuse.FuseOSError(errno.EIO)
        self._sync(path)
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return 0

    def init(self, path):
        print("ready", flush=True)


def main():
    args = sys.argv[1:]
    fail_flag, fail_dir = None, "ledger"
    if "--fail-flag" in args:
        i = args.index("--fail-flag")
        fail_flag = args[i + 1]
        del args[i : i + 2]
    if "--fail-dir" in args:
        i = args.index("--fail-dir")
        fail_dir = args[i + 1]
        del args[i : i + 2]
    backing, mountpoint = args
    fuse.FUSE(
        LazyFs(os.path.abspath(backing), fail_flag, fail_dir),
        mountpoint,
        foreground=True,
        nothreads=True,
        # No kernel caching of attributes or names: sizes change when this process decides, not the kernel.
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        fsname="lazyfs",
    )


if __name__ == "__main__":
    main()
