//! A file written in a local directory (a file sink's output, a
//! checkpoint's state): its bytes go to disk in chunks, and once a chunk is
//! on disk its pages leave the page cache. flumen writes far more than it
//! reads back; left in the page cache, its files take fresh pages for
//! every byte written (the kernel's copy into new pages was 39 % of q10's
//! CPU) and push out pages other programs use. Each chunk's writeback is started as soon as it is
//! written and awaited when the next one is, so a disk slower than the job
//! slows the sink (backpressure) instead of filling memory.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;

/// Bytes gathered before they are written out as one chunk.
const CHUNK: usize = 8 << 20;

/// What a chunk's write hands back: the file, the chunk's emptied buffer
/// and the range of its last piece, whose writeback is under way.
type Written = std::io::Result<(File, Vec<u8>, (u64, u64))>;

/// A local file being written. One chunk is written on a blocking thread
/// while the next gathers.
pub struct LocalFile {
    path: PathBuf,
    /// The file, while no chunk is being written.
    file: Option<File>,
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
        let file = tokio::task::spawn_blocking(move || match File::create(&opened) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = opened.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                File::create(&opened)
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
            self.start_write().await?;
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
            self.start_write().await?;
        }
        Ok(())
    }

    /// Writes out everything gathered and waits until it is written.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.start_write().await?;
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
    /// on a blocking thread, in pieces of at most [`CHUNK`] bytes (a
    /// Parquet row group is handed over whole): each piece's
    /// writeback starts, and that of the piece before is awaited and its
    /// pages dropped.
    async fn start_write(&mut self) -> std::io::Result<()> {
        self.settle().await?;
        if self.buffer.is_empty() {
            return Ok(());
        }
        let Some(mut file) = self.file.take() else {
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
            for piece in buffer.chunks(CHUNK) {
                file.write_all(piece)?;
                last = (at, piece.len() as u64);
                write_back(&file, last, previous);
                previous = Some(last);
                at += last.1;
            }
            buffer.clear();
            Ok((file, buffer, last))
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
