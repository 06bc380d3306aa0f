//! How an updating stream tags its rows: a trailing `Int8` column named
//! [`OP_COLUMN`] holding a [`RowOp`] per row. Append-only streams have no
//! such column.

use arrow::datatypes::{DataType, Field, Schema};

/// Name of the trailing column of an updating stream.
pub const OP_COLUMN: &str = "_op";

/// The change a row of an updating stream makes to the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i8)]
pub enum RowOp {
    /// A new row (`+I`).
    Insert = 0,
    /// A row that no longer holds (`-D`).
    Delete = 1,
    /// The old value of a row that changes (`-U`); its new value follows.
    UpdateBefore = 2,
    /// The new value of a row that changed (`+U`).
    UpdateAfter = 3,
}

impl RowOp {
    /// The operation stored as `code` in the op column.
    pub fn from_code(code: i8) -> Option<RowOp> {
        match code {
            0 => Some(RowOp::Insert),
            1 => Some(RowOp::Delete),
            2 => Some(RowOp::UpdateBefore),
            3 => Some(RowOp::UpdateAfter),
            _ => None,
        }
    }

    /// Whether the row adds to the result (insert, update-after) rather than
    /// taking away from it.
    pub fn is_addition(self) -> bool {
        matches!(self, RowOp::Insert | RowOp::UpdateAfter)
    }

    /// The short form Flink prints: `+I`, `-D`, `-U`, `+U`.
    pub fn short(self) -> &'static str {
        match self {
            RowOp::Insert => "+I",
            RowOp::Delete => "-D",
            RowOp::UpdateBefore => "-U",
            RowOp::UpdateAfter => "+U",
        }
    }
}

/// The field of the op column.
pub fn op_field() -> Field {
    Field::new(OP_COLUMN, DataType::Int8, false)
}

/// Whether `schema` is that of an updating stream (its last column is the op column).
pub fn is_updating(schema: &Schema) -> bool {
    schema
        .fields()
        .last()
        .is_some_and(|f| f.name() == OP_COLUMN && f.data_type() == &DataType::Int8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_additions_are_insert_and_update_after() {
        for op in [
            RowOp::Insert,
            RowOp::Delete,
            RowOp::UpdateBefore,
            RowOp::UpdateAfter,
        ] {
            assert_eq!(RowOp::from_code(op as i8), Some(op));
        }
        assert_eq!(RowOp::from_code(9), None);
        assert!(RowOp::Insert.is_addition() && RowOp::UpdateAfter.is_addition());
        assert!(!RowOp::Delete.is_addition() && !RowOp::UpdateBefore.is_addition());
        let schema = Schema::new(vec![Field::new("a", DataType::Int64, true), op_field()]);
        assert!(is_updating(&schema));
        assert!(!is_updating(&Schema::new(vec![Field::new(
            "a",
            DataType::Int64,
            true
        )])));
    }
}
