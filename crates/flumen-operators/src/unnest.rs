//! Expands one list column into one row per element, repeating the other
//! columns (SQL `UNNEST`); rows with an empty or null list disappear.

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
}

impl UnnestFactory {
    /// Unnests `list_column`; output column `j` comes from input column `sources[j]`.
    pub fn new(list_column: usize, sources: Vec<usize>, output: SchemaRef) -> Self {
        UnnestFactory {
            list_column,
            sources,
            output,
        }
    }
}

impl OperatorFactory for UnnestFactory {
    fn describe(&self) -> String {
        format!("Unnest: column {}", self.list_column)
    }

    fn create(&self, _ctx: &TaskContext) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Unnest {
            list_column: self.list_column,
            sources: self.sources.clone(),
            output: self.output.clone(),
        }))
    }
}

struct Unnest {
    list_column: usize,
    sources: Vec<usize>,
    output: SchemaRef,
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
        let columns = self
            .sources
            .iter()
            .map(|&c| -> Result<ArrayRef> {
                if c == self.list_column {
                    Ok(elements.clone())
                } else {
                    Ok(take(batch.column(c), &repeat, None)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if repeat.is_empty() {
            return Ok(());
        }
        out.push(RecordBatch::try_new(self.output.clone(), columns)?);
        Ok(())
    }
}
