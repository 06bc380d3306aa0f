//! A file written in a local directory (a file sink's output, a
//! checkpoint's state) without filling the page cache. flumen writes far
//! more than it reads back; through the page cache, every byte written
//! takes a fresh cache page that the kernel copies it into (39 % of q10's
//! CPU, a fifth of q18's with checkpoints every 2 s) and pushes out pages
//! other programs use. Where the file system allows direct I/O the bytes
//! go to disk from an aligned buffer (`O_DIRECT`), written a chunk at a
//! time on a blocking thread while the next gathers; elsewhere each
//! chunk's writeback is started as soon as it is written, and once on
//! disk its pages are dropped. Either way a disk slower than the job slows
//! the writer (backpressure) instead of filling memory.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

/// Bytes gathered before they are written out as one chunk.
const CHUNK: usize = 8 << 20;

/// What a chunk's write hands back: the file, the chunk's emptied buffer
/// and the range of its last piece, whose writeback is under way.
type Written = std::io::Result<(Out, Vec<u8>, (u64, u64))>;

/// What direct writes align their memory, file offsets and lengths to: the
/// largest logical block size of common disks.
const ALIGN: usize = 4096;

/// The open file, and how its bytes go to disk.
struct Out {
    file: File,
    /// Set when the file was opened for direct I/O (`O_DIRECT`): bytes go
    /// from an aligned buffer to the disk without the page cache, so the
    /// kernel neither copies them into fresh cache pages nor writes them
    /// back later. `None` where the file system refuses it (tmpfs).
    direct: Option<Direct>,
}

/// Bytes waiting for a direct write: whole blocks are written as they
/// gather, and the last part of a block is kept for the bytes after it.
struct Direct {
    /// [`CHUNK`] bytes from `start` on, aligned to [`ALIGN`].
    stage: Vec<u8>,
    start: usize,
    /// Bytes of the stage holding data.
    held: usize,
    /// The file offset of the stage's first byte: whole blocks before it
    /// are written.
    at: u64,
}

impl Direct {
    fn new() -> Self {
        let stage = vec![0u8; CHUNK + ALIGN];
        let start = stage.as_ptr().align_offset(ALIGN);
        Direct {
            stage,
            start,
            held: 0,
            at: 0,
        }
    }

    /// Appends `bytes`, writing every whole block; with `tail`, also the
    /// last part block (padded, then the file cut to its true length), to
    /// be written again whole when more bytes come.
    fn write(&mut self, file: &File, mut bytes: &[u8], tail: bool) -> std::io::Result<()> {
        let range = self.start..self.start + CHUNK;
        while !bytes.is_empty() {
            let stage = &mut self.stage[range.clone()];
            let n = (CHUNK - self.held).min(bytes.len());
            stage[self.held..self.held + n].copy_from_slice(&bytes[..n]);
            self.held += n;
            bytes = &bytes[n..];
            let whole = self.held / ALIGN * ALIGN;
            if whole > 0 && (self.held == CHUNK || bytes.is_empty()) {
                write_at(file, &stage[..whole], self.at)?;
                self.at += whole as u64;
                stage.copy_within(whole..self.held, 0);
                self.held -= whole;
            }
        }
        if tail && self.held > 0 {
            let stage = &mut self.stage[range];
            let padded = self.held.next_multiple_of(ALIGN);
            stage[self.held..padded].fill(0);
            write_at(file, &stage[..padded], self.at)?;
            file.set_len(self.at + self.held as u64)?;
        }
        Ok(())
    }
}

/// Writes `bytes` at `offset` of a file opened for direct I/O. A file
/// system that took `O_DIRECT` at open but refuses a direct write (EINVAL)
/// gets the file turned to buffered writes, and the write again.
#[cfg(target_os = "linux")]
fn write_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    match file.write_all_at(bytes, offset) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let fd = file.as_raw_fd();
            // SAFETY: `fd` is open for the duration of the calls, which
            // take and set integer flags only.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
                return Err(e);
            }
            file.write_all_at(bytes, offset)
        }
        other => other,
    }
}

/// Elsewhere files are never opened for direct I/O.
#[cfg(not(target_os = "linux"))]
fn write_at(file: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
}

/// Creates (or empties) the file at `path` for direct writes where its file
/// system allows them, else for buffered ones.
fn create(path: &std::path::Path) -> std::io::Result<Out> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let direct = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(path);
        match direct {
            Ok(file) => {
                return Ok(Out {
                    file,
                    direct: Some(Direct::new()),
                });
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Out {
        file: File::create(path)?,
        direct: None,
    })
}

/// A local file being written. One chunk is written on a blocking thread
/// while the next gathers.
pub struct LocalFile {
    path: PathBuf,
    /// The file, while no chunk is being written.
    file: Option<Out>,
    /// The chunk being written.
    writing: Option<tokio::task::JoinHandle<Written>>,
    buffer: Vec<u8>,
    /// The other chunk's buffer, kept to be filled again.
    spare: Vec<u8>,
    /// Bytes handed to the file so far.
    written: u64,
    /// The last piece written, as of the last chunk settled.
    in_flight: Option<(u64, u64)>,
}

impl LocalFile {
    /// Creates (or empties) the file at `path`, and its directory if missing.
    pub async fn create(path: PathBuf) -> std::io::Result<Self> {
        let opened = path.clone();
        let file = tokio::task::spawn_blocking(move || match create(&opened) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = opened.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                create(&opened)
            }
            other => other,
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(LocalFile {
            path,
            file: Some(file),
            writing: None,
            buffer: Vec::new(),
            spare: Vec::new(),
            written: 0,
            in_flight: None,
        })
    }

    /// Appends `bytes`, starting a chunk's write once one has gathered.
    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.start_write(false).await?;
        }
        Ok(())
    }

    /// Appends the bytes of `buf` and leaves it empty. When nothing is
    /// gathered, `buf` itself becomes the gathered bytes (and a large one
    /// goes out as its own chunk), and `buf` gets the emptied buffer.
    pub async fn write_vec(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            std::mem::swap(&mut self.buffer, buf);
        } else {
            self.buffer.extend_from_slice(buf);
            buf.clear();
        }
        if self.buffer.len() >= CHUNK / 2 {
            self.start_write(false).await?;
        }
        Ok(())
    }

    /// Writes out everything gathered and waits until it is written.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.start_write(true).await?;
        self.settle().await
    }

    /// Waits for the chunk being written, taking the file and its buffer
    /// back.
    async fn settle(&mut self) -> std::io::Result<()> {
        if let Some(writing) = self.writing.take() {
            let (file, buffer, last) = writing.await.map_err(std::io::Error::other)??;
            self.file = Some(file);
            self.spare = buffer;
            self.in_flight = Some(last);
        }
        Ok(())
    }

    /// Once the chunk before is written, starts writing what is gathered
    /// on a blocking thread: directly from an aligned buffer where the file
    /// was opened so (with `tail`, the last part block too), else in
    /// pieces of at most [`CHUNK`] bytes (a Parquet row group is handed
    /// over whole) whose writeback starts, and that of the piece before is
    /// awaited and its pages dropped.
    async fn start_write(&mut self, tail: bool) -> std::io::Result<()> {
        self.settle().await?;
        let direct_tail = tail && self.file.as_ref().is_some_and(|o| o.direct.is_some());
        if self.buffer.is_empty() && !direct_tail {
            return Ok(());
        }
        let Some(mut out) = self.file.take() else {
            return Err(std::io::Error::other(format!(
                "{}: an earlier write of this file failed",
                self.path.display()
            )));
        };
        let mut buffer = std::mem::replace(&mut self.buffer, std::mem::take(&mut self.spare));
        let (mut at, mut previous) = (self.written, self.in_flight);
        self.written += buffer.len() as u64;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            let mut last = (at, 0);
            match &mut out.direct {
                Some(direct) => direct.write(&out.file, &buffer, tail)?,
                None => {
                    for piece in buffer.chunks(CHUNK) {
                        out.file.write_all(piece)?;
                        last = (at, piece.len() as u64);
                        write_back(&out.file, last, previous);
                        previous = Some(last);
                        at += last.1;
                    }
                }
            }
            buffer.clear();
            Ok((out, buffer, last))
        }));
        Ok(())
    }
}

/// Starts writing `chunk` (offset, length) of `file` back to disk, then
/// waits for `previous` to be on disk and drops its pages from the page
/// cache. Both are advice: a file system without them (or an error, which
/// a later write or sync reports) leaves the pages cached, as before.
#[cfg(target_os = "linux")]
fn write_back(file: &File, chunk: (u64, u64), previous: Option<(u64, u64)>) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open file for the duration of the calls; neither
    // call touches memory of this process.
    unsafe {
        libc::sync_file_range(
            fd,
            chunk.0 as libc::off64_t,
            chunk.1 as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
        if let Some((start, len)) = previous {
            let (start, len) = (start as libc::off64_t, len as libc::off64_t);
            libc::sync_file_range(
                fd,
                start,
                len,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
            libc::posix_fadvise(fd, start, len, libc::POSIX_FADV_DONTNEED);
        }
    }
}

/// Elsewhere the page cache keeps the file's pages.
#[cfg(not(target_os = "linux"))]
fn write_back(_: &File, _: (u64, u64), _: Option<(u64, u64)>) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of the pages holding `range` of the file at `path` are in
    /// the page cache.
    #[cfg(target_os = "linux")]
    fn cached_pages(path: &std::path::Path, range: std::ops::Range<usize>) -> usize {
        use std::os::fd::AsRawFd;
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a read-only shared mapping of an open file of `len`
        // bytes, unmapped below; `resident` has a byte per mapped page.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let mut resident = vec![0u8; len.div_ceil(page)];
            assert_eq!(libc::mincore(map, len, resident.as_mut_ptr()), 0);
            libc::munmap(map, len);
            resident[range.start / page..range.end / page]
                .iter()
                .filter(|&&r| r & 1 == 1)
                .count()
        }
    }

    #[tokio::test]
    async fn a_file_holds_every_byte_and_its_written_chunks_leave_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        // Its directories are missing: they are made.
        let path = dir.path().join("dt=2026-12-03/hour=07/.part-0.parquet");
        let mut file = LocalFile::create(path.clone()).await.unwrap();
        let mut expected = Vec::new();
        for i in 0u32.. {
            if expected.len() > 3 * CHUNK + 12_345 {
                break;
            }
            // Pieces of an odd size, so chunks end mid-piece.
            let piece: Vec<u8> = (0..100_003u32)
                .map(|k| i.wrapping_mul(31).wrapping_add(k) as u8)
                .collect();
            file.write(&piece).await.unwrap();
            expected.extend_from_slice(&piece);
        }
        file.flush().await.unwrap();
        // Nothing is left gathered: a second flush writes nothing.
        file.flush().await.unwrap();
        drop(file);
        // The first chunk was on disk when the third was written: its
        // pages were dropped (checked before reading brings them back).
        #[cfg(target_os = "linux")]
        assert_eq!(cached_pages(&path, 0..CHUNK - 4096), 0);
        assert!(std::fs::read(&path).unwrap() == expected, "bytes differ");
    }

    #[tokio::test]
    async fn one_large_buffer_goes_out_in_pieces_whose_pages_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table.arrow");
        let mut file = LocalFile::create(path.clone()).await.unwrap();
        let expected: Vec<u8> = (0..3 * CHUNK + 5).map(|i| (i % 251) as u8).collect();
        let mut buf = expected.clone();
        file.write_vec(&mut buf).await.unwrap();
        file.flush().await.unwrap();
        drop(file);
        #[cfg(target_os = "linux")]
        assert_eq!(cached_pages(&path, 0..2 * CHUNK - 4096), 0);
        assert!(std::fs::read(&path).unwrap() == expected, "bytes differ");
    }

    /// A flush in the middle writes the part block at the end (padded
    /// and cut, for direct I/O); the bytes after it complete that block.
    #[tokio::test]
    async fn a_file_flushed_mid_block_goes_on_where_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.arrow");
        let mut file = LocalFile::create(path.clone()).await.unwrap();
        let mut expected = Vec::new();
        for (i, len) in [5000, 1, ALIGN - 3, CHUNK + 17].into_iter().enumerate() {
            let piece = vec![i as u8 + 1; len];
            file.write(&piece).await.unwrap();
            file.flush().await.unwrap();
            expected.extend_from_slice(&piece);
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                expected.len() as u64
            );
        }
        drop(file);
        assert!(std::fs::read(&path).unwrap() == expected, "bytes differ");
    }

    /// A direct write the file system refuses (here: unaligned) is made
    /// again through the page cache.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_refused_direct_write_is_written_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refused.bin");
        let out = create(&path).unwrap();
        if out.direct.is_none() {
            return; // no direct I/O on this file system: nothing refuses
        }
        write_at(&out.file, b"abc", 1).unwrap();
        write_at(&out.file, b"d", 4).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"\0abcd");
    }

    #[tokio::test]
    async fn handed_buffers_are_taken_whole_and_given_back_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.bin");
        let mut file = LocalFile::create(path.clone()).await.unwrap();
        let mut expected = Vec::new();
        for (i, len) in [100, CHUNK / 2 + 7, 3, CHUNK, 1].into_iter().enumerate() {
            let mut buf = vec![i as u8 + 1; len];
            expected.extend_from_slice(&buf);
            file.write_vec(&mut buf).await.unwrap();
            assert!(buf.is_empty(), "buffer {i} handed back with bytes");
        }
        file.flush().await.unwrap();
        drop(file);
        assert!(std::fs::read(&path).unwrap() == expected, "bytes differ");
    }
}
