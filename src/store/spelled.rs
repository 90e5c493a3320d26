//! Enums stored in a column by their one spelling (a decision's outcome, an approval's or an execution's status):
//! bound from the enum, read back into it, and a spelling this kla does not know is a corrupt value, never a
//! guess. One implementation for every such column.

use super::StoreError;

/// A stored spelling this kla does not know (a newer kla wrote it, or the file was changed).
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub(super) struct Unknown {
    pub(super) what: &'static str,
    pub(super) value: String,
}

/// `ToSql` and `FromSql` for an enum with `as_str(self) -> &'static str` and `parse(&str) -> Option<Self>` (`what`
/// names it in the error of an unknown spelling), and the calling module's `read_error(rusqlite::Error) ->
/// StoreError` for rows whose `column` holds it.
macro_rules! column {
    ($t:ty, $what:literal, $column:literal) => {
        /// A row read failed: an unknown spelling is a corrupt value (kla's fault, no retry helps), the rest is
        /// SQLite's.
        fn read_error(e: rusqlite::Error) -> $crate::store::StoreError {
            $crate::store::spelled::read_error($column, e)
        }

        impl rusqlite::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::Borrowed(
                    rusqlite::types::ValueRef::Text(self.as_str().as_bytes()),
                ))
            }
        }

        impl rusqlite::types::FromSql for $t {
            fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let s = v.as_str()?;
                <$t>::parse(s).ok_or_else(|| {
                    rusqlite::types::FromSqlError::Other(Box::new($crate::store::spelled::Unknown {
                        what: $what,
                        value: s.to_owned(),
                    }))
                })
            }
        }
    };
}
pub(super) use column;

/// [`column!`] and `Display` (the one spelling) for an enum the store defines.
macro_rules! spelled {
    ($t:ty, $what:literal, $column:literal) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        $crate::store::spelled::column!($t, $what, $column);
    };
}
pub(super) use spelled;

/// A row read failed: an unknown spelling in `column` is a corrupt value (kla's fault, no retry helps), the rest is
/// SQLite's.
pub(super) fn read_error(column: &'static str, e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::FromSqlConversionFailure(_, _, inner) if inner.is::<Unknown>() => {
            StoreError::Corrupt(format!("{column}: {inner}"))
        }
        _ => StoreError::Sqlite(e),
    }
}
