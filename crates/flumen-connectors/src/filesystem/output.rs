//! Where the file sink's bytes go: a hidden file that is renamed into place
//! later (written directly in a local directory, through a buffered writer
//! in stores without resumable uploads), or a multipart upload to the file's final name that
//! nobody sees until it is completed (S3), so committing is completing the
//! upload instead of copying the file.

use std::sync::Arc;

use flumen_state::LocalFile;
use object_store::buffered::BufWriter;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

/// Bytes gathered before a part is uploaded. S3 wants every part but the
/// last to hold at least 5 MiB.
const PART_SIZE: usize = 8 << 20;

/// The bytes of one file being written.
pub(super) enum Output {
    Local(Box<LocalFile>),
    Buffered(Box<BufWriter>),
    Upload(Box<Upload>),
}

impl Output {
    /// Appends `bytes`.
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Local(f) => f.write(bytes).await,
            Output::Buffered(w) => w.write_all(bytes).await,
            Output::Upload(u) => u.write(bytes).await.map_err(std::io::Error::other),
        }
    }

    /// Appends the bytes of `buf`, leaving it empty (with room) to be
    /// filled again; a local file takes a large `buf` without copying it.
    pub(super) async fn write_vec(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Output::Local(f) => f.write_vec(buf).await,
            _ => {
                self.write_all(buf).await?;
                buf.clear();
                Ok(())
            }
        }
    }

    /// Writes out the last bytes. A buffered file is then complete; an
    /// upload is sealed: all its parts are stored, waiting to be completed.
    pub(super) async fn finish(&mut self) -> std::io::Result<Option<Sealed>> {
        match self {
            Output::Local(f) => f.flush().await.map(|()| None),
            Output::Buffered(w) => w.shutdown().await.map(|()| None),
            Output::Upload(u) => u.seal().await.map(Some).map_err(std::io::Error::other),
        }
    }
}

/// A file written as a multipart upload: parts go up as they fill, and
/// the file appears under its name only when the upload is completed.
pub(super) struct Upload {
    store: Arc<dyn MultipartStore>,
    path: Path,
    id: MultipartId,
    parts: Vec<PartId>,
    buffer: Vec<u8>,
}

impl Upload {
    /// Starts an upload to `path`.
    pub(super) async fn start(
        store: Arc<dyn MultipartStore>,
        path: Path,
    ) -> object_store::Result<Self> {
        let id = store.create_multipart(&path).await?;
        Ok(Upload {
            store,
            path,
            id,
            parts: Vec::new(),
            buffer: Vec::new(),
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> object_store::Result<()> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= PART_SIZE {
            self.upload_part().await?;
        }
        Ok(())
    }

    /// Uploads what is buffered as the next part.
    async fn upload_part(&mut self) -> object_store::Result<()> {
        if self.buffer.is_empty() && !self.parts.is_empty() {
            return Ok(());
        }
        let payload = std::mem::take(&mut self.buffer);
        let part = self
            .store
            .put_part(&self.path, &self.id, self.parts.len(), payload.into())
            .await?;
        self.parts.push(part);
        Ok(())
    }

    /// Uploads the last part; the upload then waits to be completed.
    async fn seal(&mut self) -> object_store::Result<Sealed> {
        self.upload_part().await?;
        Ok(Sealed {
            path: self.path.clone(),
            id: self.id.clone(),
            parts: std::mem::take(&mut self.parts),
        })
    }
}

/// An upload with all its parts stored, not yet visible: what a checkpoint
/// keeps so that whichever run finishes the checkpoint can complete it.
#[derive(Debug, Clone)]
pub(super) struct Sealed {
    pub(super) path: Path,
    pub(super) id: MultipartId,
    pub(super) parts: Vec<PartId>,
}

impl Sealed {
    /// Makes the file visible. An upload that an earlier run already
    /// completed is gone from the store's uploads; its file is there, so
    /// that counts as done.
    pub(super) async fn complete(
        &self,
        uploads: &dyn MultipartStore,
        store: &dyn ObjectStore,
    ) -> object_store::Result<()> {
        let Err(e) = uploads
            .complete_multipart(&self.path, &self.id, self.parts.clone())
            .await
        else {
            return Ok(());
        };
        match store.head(&self.path).await {
            Ok(_) => Ok(()),
            Err(_) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    #[tokio::test]
    async fn an_upload_is_invisible_until_completed_and_completes_once() {
        let store = Arc::new(InMemory::new());
        let path = Path::from("out/a.json");
        let mut out = Output::Upload(Box::new(
            Upload::start(store.clone(), path.clone()).await.unwrap(),
        ));
        out.write_all(b"{\"a\":1}\n").await.unwrap();
        out.write_all(&vec![b' '; PART_SIZE]).await.unwrap();
        out.write_all(b"{\"a\":2}\n").await.unwrap();
        let sealed = out.finish().await.unwrap().unwrap();
        assert_eq!(sealed.parts.len(), 2);
        assert!(
            store.head(&path).await.is_err(),
            "visible before completion"
        );
        sealed
            .complete(store.as_ref(), store.as_ref())
            .await
            .unwrap();
        let bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(bytes.len(), PART_SIZE + 16);
        assert!(bytes.ends_with(b"{\"a\":2}\n"));
        // A second run completing the same upload finds the file: done.
        sealed
            .complete(store.as_ref(), store.as_ref())
            .await
            .unwrap();
        let gone = Sealed {
            path: Path::from("out/never.json"),
            ..sealed
        };
        assert!(gone.complete(store.as_ref(), store.as_ref()).await.is_err());
    }
}
