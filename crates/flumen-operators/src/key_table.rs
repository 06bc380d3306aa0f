//! Group keys interned to dense ids (DataFusion `GroupValues`, one
//! vectorised call per batch), each also kept as an `arrow-row` row so the
//! key can be emitted again while its group lives on, which `GroupValues`
//! alone cannot do without giving its keys up.

use std::sync::Arc;

use arrow::array::{ArrayRef, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::ScalarValue;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use flumen_types::{FlumenError, Result};

fn err(e: impl std::fmt::Display) -> FlumenError {
    FlumenError::execution(format!("group keys: {e}"))
}

/// The keys of one operator subtask's groups.
pub(crate) struct KeyTable {
    schema: SchemaRef,
    groups: Box<dyn GroupValues>,
    rows: Rows,
    converter: RowConverter,
    /// With no key columns (a global aggregate) every row is in group 0,
    /// which exists once a row has come.
    global: Option<usize>,
}

impl KeyTable {
    /// An empty table of keys with these fields.
    pub(crate) fn new(fields: Vec<Field>) -> Result<Self> {
        let schema = Arc::new(Schema::new(fields));
        let converter = RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?;
        let global = schema.fields().is_empty().then_some(0);
        Ok(KeyTable {
            groups: new_group_values(schema.clone(), &GroupOrdering::None).map_err(err)?,
            rows: converter.empty_rows(0, 0),
            converter,
            schema,
            global,
        })
    }

    /// Number of keys.
    pub(crate) fn len(&self) -> usize {
        self.global.unwrap_or_else(|| self.groups.len())
    }

    /// The id of each row's key in `ids`; new keys get the next ids.
    pub(crate) fn intern(
        &mut self,
        keys: &[ArrayRef],
        rows: usize,
        ids: &mut Vec<usize>,
    ) -> Result<()> {
        ids.clear();
        if let Some(count) = &mut self.global {
            ids.resize(rows, 0);
            *count = (*count).max(usize::from(rows > 0));
            return Ok(());
        }
        let before = self.groups.len();
        self.groups.intern(keys, ids).map_err(err)?;
        let total = self.groups.len();
        if total > before {
            let mut first = vec![u32::MAX; total - before];
            for (row, &g) in ids.iter().enumerate() {
                if g >= before && first[g - before] == u32::MAX {
                    first[g - before] = row as u32;
                }
            }
            let indices = UInt32Array::from(first);
            let new_keys: Vec<ArrayRef> = keys
                .iter()
                .map(|k| take(k, &indices, None))
                .collect::<std::result::Result<_, _>>()?;
            self.converter.append(&mut self.rows, &new_keys)?;
        }
        Ok(())
    }

    /// The key columns of `ids`, in that order.
    pub(crate) fn emit(&self, ids: impl Iterator<Item = usize>) -> Result<Vec<ArrayRef>> {
        if self.global.is_some() {
            return Ok(Vec::new());
        }
        Ok(self.converter.convert_rows(ids.map(|g| self.rows.row(g)))?)
    }

    /// Keeps only the keys `keep` (ascending ids), which become ids `0..`.
    pub(crate) fn retain(&mut self, keep: &[usize]) -> Result<()> {
        if let Some(count) = &mut self.global {
            *count = keep.len().min(1);
            return Ok(());
        }
        let keys = self.emit(keep.iter().copied())?;
        let mut groups =
            new_group_values(self.schema.clone(), &GroupOrdering::None).map_err(err)?;
        let mut ids = Vec::with_capacity(keep.len());
        if !keep.is_empty() {
            groups.intern(&keys, &mut ids).map_err(err)?;
        }
        self.groups = groups;
        self.rows = self.converter.empty_rows(keep.len(), 0);
        self.converter.append(&mut self.rows, &keys)?;
        Ok(())
    }

    /// Bytes held.
    pub(crate) fn size(&self) -> usize {
        self.groups.size() + self.rows.size()
    }
}

/// One output column from per-row scalar values, cast to the field's type.
pub(crate) fn scalar_column(
    values: impl Iterator<Item = ScalarValue>,
    field: &Field,
) -> Result<ArrayRef> {
    let column = ScalarValue::iter_to_array(values).map_err(err)?;
    Ok(if column.data_type() == field.data_type() {
        column
    } else {
        cast(&column, field.data_type())?
    })
}
