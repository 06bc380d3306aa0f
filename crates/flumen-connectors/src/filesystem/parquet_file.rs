//! A Parquet file being written: parquet's encoder writes each finished row
//! group into a buffer that is handed to the output whole. parquet's own
//! async writer gives the encoder a new, empty buffer for every row group,
//! which then grows by copying itself as it doubles (with the copy into
//! the output, 16 % of q10's CPU went to moving bytes); here the buffers
//! are reused, and a local file takes them without copying.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::errors::{ParquetError, Result};
use parquet::file::properties::WriterProperties;

use super::output::{Output, Sealed};

/// A Parquet file and where its bytes go.
pub(super) struct ParquetFile {
    writer: ArrowWriter<Vec<u8>>,
    out: Output,
}

impl ParquetFile {
    /// Starts a file of `schema` written to `out`.
    pub(super) fn try_new(out: Output, schema: SchemaRef, props: WriterProperties) -> Result<Self> {
        Ok(ParquetFile {
            writer: ArrowWriter::try_new(Vec::new(), schema, Some(props))?,
            out,
        })
    }

    /// Adds `batch`; a row group it completes goes to the output.
    pub(super) async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let groups = self.writer.flushed_row_groups().len();
        self.writer.write(batch)?;
        if self.writer.flushed_row_groups().len() != groups {
            self.hand_over().await?;
        }
        Ok(())
    }

    /// Bytes of the file so far, with the row group being built at its
    /// estimated encoded size.
    pub(super) fn bytes(&self) -> u64 {
        (self.writer.bytes_written() + self.writer.in_progress_size()) as u64
    }

    /// Writes the last row group and the footer, then finishes the output.
    pub(super) async fn finish(mut self) -> Result<Option<Sealed>> {
        self.writer.finish()?;
        self.hand_over().await?;
        self.out.finish().await.map_err(external)
    }

    /// Gives the encoded bytes to the output; the encoder goes on in the
    /// (emptied) buffer the output hands back.
    async fn hand_over(&mut self) -> Result<()> {
        self.out
            .write_vec(self.writer.inner_mut())
            .await
            .map_err(external)
    }
}

fn external(e: std::io::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}
