//! The machinery behind the key list of `keys.rs`: the [`config_keys!`] macro that turns one declaration per key
//! into the `kla serve` flags ([`super::RawConfig`], clap's derive), the merge of flags over the file
//! ([`super::RawConfig::over`]), the file reader's dispatch (`file.rs` walks [`super::KEYS`]) and the settings table
//! of docs/config.md ([`markdown_table`]). It owns no key itself.

use serde::de::DeserializeOwned;

/// How one `RawConfig` field is read from the file and merged over the file's value. The two shapes a key takes:
/// `Option<T>` (one value; a flag wins when given) and `Vec<T>` (a repeatable flag; any flag replaces the file's
/// whole list).
pub trait Slot: Sized {
    /// The field's type in the file (every file key is optional).
    type File: DeserializeOwned;
    /// Shown after the flag in the docs table.
    const FLAG_NOTE: &'static str;
    /// Shown after the file key in the docs table.
    const FILE_NOTE: &'static str;
    /// The field from its file value.
    fn from_file(value: Self::File) -> Self;
    /// `self` (from the flags) over `base` (from the file).
    fn over(self, base: Self) -> Self;
}

impl<T: DeserializeOwned> Slot for Option<T> {
    type File = Option<T>;
    const FLAG_NOTE: &'static str = "";
    const FILE_NOTE: &'static str = "";
    fn from_file(value: Option<T>) -> Self {
        value
    }
    fn over(self, base: Self) -> Self {
        self.or(base)
    }
}

impl<T: DeserializeOwned> Slot for Vec<T> {
    type File = Option<Vec<T>>;
    const FLAG_NOTE: &'static str = " (repeatable)";
    const FILE_NOTE: &'static str = " (list)";
    fn from_file(value: Option<Vec<T>>) -> Self {
        value.unwrap_or_default()
    }
    fn over(self, base: Self) -> Self {
        if self.is_empty() { base } else { self }
    }
}

/// What the file reader hands a key to read its value from: the value of a mapping entry, or the next element of
/// a section written as a sequence (serde's positional form of a struct).
pub trait ValueSource<'de> {
    /// The deserializer's error.
    type Error: serde::de::Error;
    /// The next value, or `None` when a sequence has ended.
    fn value<T: serde::Deserialize<'de>>(&mut self) -> Result<Option<T>, Self::Error>;
}

/// One key as declared in `keys.rs`.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The `RawConfig` field; the flag is its kebab-case form.
    pub field: &'static str,
    /// Its dotted place in the file (`api.limits.max-connections`).
    pub path: &'static str,
    /// Whether the file value lives inside a section owned by another module (`proxy.addr` in
    /// `crate::proxy::FileProxy`) and is lifted out of it after reading, rather than read at `path` itself.
    pub embedded: bool,
    /// The docs table's row, for keys that are flags (`None`: file only, and documented by its section's owner).
    pub doc: Option<KeyDoc>,
}

/// A flag's row in docs/config.md.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// The value after the flag (`<path>`, `[=true\|false]`).
    pub arg: &'static str,
    /// The default, as the docs state it.
    pub default: &'static str,
    /// Meaning and validation.
    pub meaning: &'static str,
    /// [`Slot::FLAG_NOTE`] of the field.
    pub flag_note: &'static str,
    /// [`Slot::FILE_NOTE`] of the field.
    pub file_note: &'static str,
}

impl Key {
    /// The flag's name without `--`.
    pub fn flag(&self) -> String {
        self.field.replace('_', "-")
    }

    /// The flag's row of the docs table.
    fn row(&self, doc: &KeyDoc) -> String {
        let space = if doc.arg.is_empty() || doc.arg.starts_with('[') {
            ""
        } else {
            " "
        };
        format!(
            "| `--{}{space}{}`{} | `{}`{} | {} | {} |\n",
            self.flag(),
            doc.arg,
            doc.flag_note,
            self.path,
            doc.file_note,
            doc.default,
            doc.meaning
        )
    }
}

/// The settings table of docs/config.md ("Settings"), generated from [`super::KEYS`]; a test compares it with the
/// doc and prints it when they differ.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| flag | file key | default | meaning and validation |\n\
         |---|---|---|---|\n\
         | `--config <path>` | (none) | none | YAML file with the keys below |\n",
    );
    for key in super::KEYS {
        if let Some(doc) = &key.doc {
            out += &key.row(doc);
        }
    }
    out
}

/// Declares every key of `kla serve` once. Each entry is a `RawConfig` field with its flag's help (the doc
/// comment) and clap attributes, then in braces: `file:` its dotted place in the file; optionally `lift:`, a
/// function taking the value out of another module's section when the key lives inside one (`proxy.addr`); `keep:`,
/// a filter applied to a whole section once its lifted keys are out; and `doc:`, the docs table's value
/// placeholder, default and meaning (present exactly for the keys that are flags). Entries are in the file's
/// order, which is also the order of `kla serve --help`, of the docs table and of the "expected one of" lists in
/// errors about unknown file keys.
macro_rules! config_keys {
    ($(
        $(#[$attr:meta])*
        $field:ident: $ty:ty {
            file: $path:literal,
            $(lift: $lift:expr,)?
            $(keep: $keep:expr,)?
            $(doc: [$arg:literal, $default:literal, $meaning:literal $(,)?],)?
        }
    )*) => {
        /// The settings of `kla serve` in the flags' form: one flat, optional field per flag. A config file is read
        /// into this form too ([`RawConfig::from_file`]); each field's place in the file is in [`KEYS`]. Declared
        /// in `keys.rs`, the one list of keys.
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct RawConfig {
            $(
                $(#[$attr])*
                pub $field: $ty,
            )*
        }

        /// Every key of `kla serve`, in the file's order.
        pub const KEYS: &[$crate::config::declare::Key] = &[$(
            $crate::config::declare::Key {
                field: stringify!($field),
                path: $path,
                embedded: config_keys!(@some $($lift)?),
                doc: config_keys!(@doc $ty; $($arg, $default, $meaning)?),
            },
        )*];

        impl RawConfig {
            /// `self` with every unset field taken from `base`.
            pub fn over(self, base: RawConfig) -> RawConfig {
                use $crate::config::declare::Slot as _;
                RawConfig {
                    $($field: self.$field.over(base.$field),)*
                }
            }

            /// Reads the value of the file key at `path` (a leaf of [`KEYS`]) from `src`; `Ok(false)` when a
            /// sequence has no more elements.
            pub(super) fn read_key<'de, S: $crate::config::declare::ValueSource<'de>>(
                &mut self,
                path: &str,
                src: &mut S,
            ) -> Result<bool, S::Error> {
                use $crate::config::declare::Slot;
                $(
                    if path == $path {
                        return Ok(match src.value::<<$ty as Slot>::File>()? {
                            Some(v) => {
                                self.$field = <$ty as Slot>::from_file(v);
                                true
                            }
                            None => false,
                        });
                    }
                )*
                Err(<S::Error as serde::de::Error>::custom(format_args!("no key {path}")))
            }

            /// Takes the keys that live inside another module's section out of it, then drops sections left
            /// with nothing of their own.
            pub(super) fn lift(&mut self) {
                $($(
                    let value = ($lift)(&mut *self);
                    self.$field = value;
                )?)*
                $($(
                    self.$field = self.$field.take().filter($keep);
                )?)*
            }
        }
    };
    (@some) => { false };
    (@some $($t:tt)+) => { true };
    (@doc $ty:ty;) => { None };
    (@doc $ty:ty; $arg:literal, $default:literal, $meaning:literal) => {
        Some($crate::config::declare::KeyDoc {
            arg: $arg,
            default: $default,
            meaning: $meaning,
            flag_note: <$ty as $crate::config::declare::Slot>::FLAG_NOTE,
            file_note: <$ty as $crate::config::declare::Slot>::FILE_NOTE,
        })
    };
}
pub(crate) use config_keys;
