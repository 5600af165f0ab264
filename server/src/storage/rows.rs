//! Reading rows the same way on every backend, with the schema's column types.
//!
//! The schema has three column types (see `migrations/README.md`): text, 64-bit integers and
//! doubles, each possibly NULL. [`Columns`] reads exactly those, as `String`, `i64` and `f64`,
//! for any sqlx row whose backend decodes them (SQLite's and PostgreSQL's do), so the code that
//! turns rows into records is written once. Narrower Rust fields go through the checked
//! conversions below.

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::{Result, StorageError};

pub(super) trait Columns {
    fn text(&self, column: &str) -> Result<String>;
    fn text_opt(&self, column: &str) -> Result<Option<String>>;
    /// A `BIGINT` (SQLite `INTEGER`) column.
    fn int(&self, column: &str) -> Result<i64>;
    fn int_opt(&self, column: &str) -> Result<Option<i64>>;
    /// A `DOUBLE PRECISION` column.
    fn float(&self, column: &str) -> Result<f64>;
    fn float_opt(&self, column: &str) -> Result<Option<f64>>;
}

impl<R> Columns for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &str) -> Result<String> {
        Ok(self.try_get(column)?)
    }
    fn text_opt(&self, column: &str) -> Result<Option<String>> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64> {
        Ok(self.try_get(column)?)
    }
    fn int_opt(&self, column: &str) -> Result<Option<i64>> {
        Ok(self.try_get(column)?)
    }
    fn float(&self, column: &str) -> Result<f64> {
        Ok(self.try_get(column)?)
    }
    fn float_opt(&self, column: &str) -> Result<Option<f64>> {
        Ok(self.try_get(column)?)
    }
}

/// A 64-bit column value into a narrower Rust field.
pub(super) fn narrow<T: TryFrom<i64>>(what: &'static str, value: i64) -> Result<T> {
    T::try_from(value).map_err(|_| StorageError::OutOfRange {
        what,
        value: value.to_string(),
        target: std::any::type_name::<T>(),
    })
}

/// An unsigned Rust value into a 64-bit (signed) column.
pub(super) fn bigint(what: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| StorageError::OutOfRange { what, value: value.to_string(), target: "BIGINT" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_checked() {
        assert_eq!(narrow::<u32>("attempts", 3).unwrap(), 3);
        assert_eq!(narrow::<u64>("bytes", i64::MAX).unwrap(), i64::MAX as u64);
        let err = narrow::<u32>("attempts", -1).unwrap_err();
        assert_eq!(err.to_string(), "attempts: -1 does not fit u32");
        assert!(narrow::<u32>("attempts", i64::from(u32::MAX) + 1).is_err());
        assert!(narrow::<u64>("bytes", -5).is_err());
        assert_eq!(bigint("bytes", 7).unwrap(), 7);
        assert_eq!(
            bigint("bytes", u64::MAX).unwrap_err().to_string(),
            format!("bytes: {} does not fit BIGINT", u64::MAX)
        );
    }
}
