//! Group values of one string column (Nexmark q16's `channel`) interned by
//! a [`StringDictionary`], which prefetches each row's table slot a few
//! rows ahead. DataFusion's `GroupValuesBytes` probes one
//! row after another: with q16's 10,004 channels its table and strings do
//! not stay in L2 beside the distinct sets, and it was 12 % of q16's CPU.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray, UInt32Array};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::EmitTo;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use crate::string_dictionary::StringDictionary;

/// The group values for keys of `schema`: [`StringGroups`] for one string
/// column, DataFusion's own otherwise.
pub(crate) fn group_values(schema: &SchemaRef) -> Result<Box<dyn GroupValues>> {
    let fields = schema.fields();
    if fields.len() == 1 && fields[0].data_type() == &DataType::Utf8 {
        return Ok(Box::new(StringGroups::default()));
    }
    new_group_values(schema.clone(), &GroupOrdering::None)
}

/// Distinct strings as groups; a NULL is a group of its own.
#[derive(Default)]
pub(crate) struct StringGroups {
    /// The distinct non-null strings; their ids are the group ids, but for
    /// the NULL group's.
    dictionary: Option<StringDictionary>,
    /// The NULL group's id, once a NULL came: the strings' ids from it on
    /// are their groups' less one.
    null_group: Option<usize>,
}

impl StringGroups {
    fn strings(&self) -> usize {
        self.dictionary.as_ref().map_or(0, |d| d.values().len())
    }
}

impl GroupValues for StringGroups {
    fn intern(&mut self, cols: &[ArrayRef], groups: &mut Vec<usize>) -> Result<()> {
        let strings = cols[0].as_string_opt::<i32>().ok_or_else(|| {
            DataFusionError::Internal(format!("string groups of {}", cols[0].data_type()))
        })?;
        let before = self.strings();
        let rows = UInt32Array::from_iter_values(0..strings.len() as u32);
        let ids = self
            .dictionary
            .get_or_insert_with(StringDictionary::new)
            .intern(strings, &rows, usize::MAX)
            .ok_or_else(|| DataFusionError::Internal("string groups: no limit".into()))?;
        if self.null_group.is_none() && ids.null_count() > 0 {
            // The NULL group comes after the strings first seen before the
            // batch's first NULL.
            let first = (0..ids.len()).find(|&r| ids.is_null(r)).unwrap_or(0);
            let seen = ids.values()[..first]
                .iter()
                .enumerate()
                .filter(|&(r, _)| ids.is_valid(r))
                .map(|(_, &id)| id as usize + 1)
                .max()
                .unwrap_or(0);
            self.null_group = Some(seen.max(before));
        }
        groups.clear();
        groups.extend(ids.values().iter().enumerate().map(|(r, &id)| {
            let id = id as usize;
            match self.null_group {
                Some(null) if ids.is_null(r) => null,
                Some(null) if id >= null => id + 1,
                _ => id,
            }
        }));
        Ok(())
    }

    fn size(&self) -> usize {
        self.dictionary.as_ref().map_or(0, StringDictionary::bytes)
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        self.strings() + usize::from(self.null_group.is_some())
    }

    fn emit(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let strings = self
            .dictionary
            .take()
            .map(|d| d.values().clone())
            .unwrap_or_else(|| StringArray::new_null(0));
        let all: StringArray = match self.null_group.take() {
            Some(null) => strings
                .iter()
                .take(null)
                .chain(std::iter::once(None))
                .chain(strings.iter().skip(null))
                .collect(),
            None => strings,
        };
        let n = match emit_to {
            EmitTo::All => all.len(),
            EmitTo::First(n) => n.min(all.len()),
        };
        if n < all.len() {
            let rest: ArrayRef = Arc::new(all.slice(n, all.len() - n));
            self.intern(&[rest], &mut Vec::new())?;
        }
        Ok(vec![Arc::new(all.slice(0, n))])
    }

    fn clear_shrink(&mut self, _num_rows: usize) {
        *self = StringGroups::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[Option<&str>]) -> Vec<ArrayRef> {
        vec![Arc::new(StringArray::from(values.to_vec()))]
    }

    /// The ids and emitted keys DataFusion's own group values give, for
    /// batches with repeated strings, a NULL first seen mid-batch after
    /// new strings, and an emit of the first groups.
    #[test]
    fn groups_are_those_of_datafusions_group_values() {
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("k", DataType::Utf8, true),
        ]));
        let mut ours = group_values(&schema).unwrap();
        let mut theirs = new_group_values(schema, &GroupOrdering::None).unwrap();
        let batches = [
            strings(&[Some("b"), Some("a"), Some("b")]),
            strings(&[Some("c"), None, Some("d"), Some("a"), None, Some("")]),
            strings(&[Some("e"), None, Some("c")]),
        ];
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for batch in &batches {
            ours.intern(batch, &mut a).unwrap();
            theirs.intern(batch, &mut b).unwrap();
            assert_eq!(a, b);
            assert_eq!(ours.len(), theirs.len());
        }
        assert_eq!(ours.len(), 7);
        let first = ours.emit(EmitTo::First(4)).unwrap();
        assert_eq!(first, theirs.emit(EmitTo::First(4)).unwrap());
        ours.intern(&batches[2], &mut a).unwrap();
        theirs.intern(&batches[2], &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            ours.emit(EmitTo::All).unwrap(),
            theirs.emit(EmitTo::All).unwrap()
        );
        assert!(ours.is_empty());
    }
}
