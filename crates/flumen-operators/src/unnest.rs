//! Expands one list column into one row per element, repeating the other
//! columns (SQL `UNNEST`); rows with an empty or null list disappear. Under
//! a window aggregate that builds sliding windows from panes, the UNNEST of
//! `hop(…)` gives each row only its list's last element, its last window.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::take;
use arrow::datatypes::SchemaRef;
use flumen_runtime::{Operator, OperatorFactory, TaskContext};
use flumen_types::{FlumenError, Result};

/// Makes [`Unnest`] operators.
pub struct UnnestFactory {
    /// The input column holding the lists.
    list_column: usize,
    /// For each output column, the input column it comes from (the list
    /// column's position gives the elements).
    sources: Vec<usize>,
    output: SchemaRef,
    /// Only the last element of each list.
    last_only: bool,
}

impl UnnestFactory {
    /// Unnests `list_column`; output column `j` comes from input column
    /// `sources[j]`; with `last_only`, one row per list, its last element.
    pub fn new(
        list_column: usize,
        sources: Vec<usize>,
        output: SchemaRef,
        last_only: bool,
    ) -> Self {
        UnnestFactory {
            list_column,
            sources,
            output,
            last_only,
        }
    }
}

impl OperatorFactory for UnnestFactory {
    fn describe(&self) -> String {
        format!(
            "Unnest: column {}{}",
            self.list_column,
            if self.last_only {
                ", last element only (panes)"
            } else {
                ""
            }
        )
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Unnest {
            list_column: self.list_column,
            sources: self.sources.clone(),
            output: self.output.clone(),
            last_only: self.last_only,
        }))
    }
}

struct Unnest {
    list_column: usize,
    sources: Vec<usize>,
    output: SchemaRef,
    last_only: bool,
}

impl Unnest {
    /// One row per non-empty list, with its last element.
    fn last_elements(&self, batch: &RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let lists = batch.column(self.list_column).as_list::<i32>();
        let offsets = lists.value_offsets();
        let mut rows = Vec::with_capacity(lists.len());
        let mut last = Vec::with_capacity(lists.len());
        for row in 0..lists.len() {
            if lists.is_valid(row) && offsets[row + 1] > offsets[row] {
                rows.push(row as u32);
                last.push(offsets[row + 1] as u32 - 1);
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let elements = take(lists.values(), &UInt32Array::from(last), None)?;
        let rows = (rows.len() < batch.num_rows()).then(|| UInt32Array::from(rows));
        out.push(self.assemble(batch, &elements, rows.as_ref())?);
        Ok(())
    }

    /// The output batch: `elements` in the list column's place, the other
    /// columns' input rows `rows` (all of them, in order, when `None`).
    fn assemble(
        &self,
        batch: &RecordBatch,
        elements: &ArrayRef,
        rows: Option<&UInt32Array>,
    ) -> Result<RecordBatch> {
        let columns = self
            .sources
            .iter()
            .map(|&c| -> Result<ArrayRef> {
                Ok(match rows {
                    _ if c == self.list_column => elements.clone(),
                    Some(rows) => take(batch.column(c), rows, None)?,
                    None => batch.column(c).clone(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.output.clone(), columns)?)
    }
}

impl Operator for Unnest {
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<RecordBatch>) -> Result<()> {
        let lists = batch.column(self.list_column);
        let Some(lists) = lists.as_list_opt::<i32>() else {
            return Err(FlumenError::execution(format!(
                "UNNEST of a {} column is not supported",
                lists.data_type()
            )));
        };
        if self.last_only {
            return self.last_elements(&batch, out);
        }
        let offsets = lists.value_offsets();
        let mut repeat = Vec::with_capacity(offsets[offsets.len() - 1] as usize);
        for row in 0..lists.len() {
            if lists.is_valid(row) {
                let n = (offsets[row + 1] - offsets[row]) as usize;
                repeat.extend(std::iter::repeat_n(row as u32, n));
            }
        }
        let repeat = UInt32Array::from(repeat);
        let first = offsets[0] as usize;
        let last = offsets[offsets.len() - 1] as usize;
        let elements = lists.values().slice(first, last - first);
        if repeat.is_empty() {
            return Ok(());
        }
        out.push(self.assemble(&batch, &elements, Some(&repeat))?);
        Ok(())
    }
}
