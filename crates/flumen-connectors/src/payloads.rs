//! Message payloads of one split waiting to be decoded, back to back in
//! one buffer, each with its position in the split (an offset, a
//! sequence), and their decoding: all in one call of the format's decoder,
//! falling back to one at a time only to find and handle the malformed
//! ones as `bad_data` says.

use arrow::record_batch::RecordBatch;
use flumen_runtime::JobMetrics;
use flumen_types::{FlumenError, Result};

use crate::bad_data::{BadData, dead_letter_record};
use crate::format::PayloadDecoder;

/// Payloads taken from a split and not yet decoded.
#[derive(Default)]
pub(crate) struct Payloads {
    data: Vec<u8>,
    ends: Vec<usize>,
    positions: Vec<i64>,
}

impl Payloads {
    /// Adds a payload found at `position`.
    pub(crate) fn push(&mut self, payload: &[u8], position: i64) {
        self.data.extend_from_slice(payload);
        self.ends.push(self.data.len());
        self.positions.push(position);
    }

    /// Empties it, keeping its memory for the next round.
    pub(crate) fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.positions.clear();
    }

    /// The position of each payload, in order.
    pub(crate) fn positions(&self) -> &[i64] {
        &self.positions
    }

    /// The rows of the payloads, with the index of the payload each comes
    /// from when that is not one row per payload (some were left out, or
    /// one was two rows).
    /// A malformed payload fails the job with `failed(position)` and the
    /// error, is dropped and counted, or becomes a dead-letter record in
    /// `dead` with `where_(position)` (a JSON object) beside its error and
    /// bytes.
    pub(crate) fn decode(
        &self,
        decoder: &PayloadDecoder,
        bad_data: &BadData,
        metrics: &JobMetrics,
        dead: &mut Vec<String>,
        where_: impl Fn(i64) -> serde_json::Value,
        failed: impl Fn(i64) -> String,
    ) -> Result<(RecordBatch, Option<Vec<usize>>)> {
        let payloads: Vec<&[u8]> = (0..self.ends.len())
            .map(|i| {
                let start = if i == 0 { 0 } else { self.ends[i - 1] };
                &self.data[start..self.ends[i]]
            })
            .collect();
        if let Ok(decoded) = decoder.decode(&payloads) {
            return Ok(decoded);
        }
        let mut good = Vec::new();
        let mut kept = Vec::new();
        let mut dropped = 0;
        for (i, (payload, &position)) in payloads.iter().zip(&self.positions).enumerate() {
            match (decoder.decode_one(payload), bad_data) {
                (Ok(b), _) => {
                    kept.extend(std::iter::repeat_n(i, b.num_rows()));
                    good.push(b);
                }
                (Err(_), BadData::Drop) => dropped += 1,
                (Err(e), BadData::DeadLetter(_)) => dead.push(dead_letter_record(
                    where_(position),
                    &e.to_string(),
                    payload,
                )),
                (Err(e), BadData::Fail) => {
                    return Err(FlumenError::BadData(format!("{}: {e}", failed(position))));
                }
            }
        }
        metrics.add_bad_records_dropped(dropped);
        Ok((
            arrow::compute::concat_batches(decoder.schema(), &good)?,
            Some(kept),
        ))
    }
}
