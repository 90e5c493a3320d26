//! The YAML file of `kla serve --config`: one nested section per component, unknown keys refused at every level.
//! It is read straight into a [`RawConfig`], the form of the flags, by following the dotted places of [`KEYS`], so
//! that flags and file merge key by key and one validation covers both. The sections are those places' prefixes;
//! errors name them as serde names the fields of nested structs (`api.tls: unknown field `chain`, expected `cert`
//! or `key` at line 2 column 26`). Sections owned by other modules (`proxy:`, `otlp:`) and the list `webhooks:` are
//! read whole with their own serde types.

use super::declare::ValueSource;
use super::{ConfigError, KEYS, RawConfig};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One entry of `webhooks:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileWebhook {
    /// Unique; names the webhook in logs and keeps its delivery position.
    pub name: String,
    /// `http` or `https` URL events are POSTed to.
    pub url: String,
    /// The tenant whose events are sent.
    pub tenant: String,
    /// `whsec_<base64>`; or `secret-file`.
    pub secret: Option<String>,
    /// A file holding the secret.
    pub secret_file: Option<PathBuf>,
    /// Event types; default `approval.required`, `approval.resolved`, `approval.expired`.
    pub events: Option<Vec<String>>,
    /// One delivery's timeout; default 10s.
    pub timeout: Option<String>,
    /// Attempts per event; default 10.
    pub max_attempts: Option<u32>,
    /// Wait before the first retry (doubling after each); default 1s.
    pub retry_initial: Option<String>,
}

impl RawConfig {
    /// Reads a YAML config file (nested sections) into the flags' form.
    pub fn from_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses the text of a config file into the flags' form; errors name the key with its line and column.
    pub fn from_yaml(text: &str) -> Result<RawConfig, String> {
        /// The whole file, as the top-level section.
        struct File(RawConfig);
        impl<'de> Deserialize<'de> for File {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<File, D::Error> {
                let mut raw = RawConfig::default();
                Fields::of(&mut raw, "")?.deserialize(d)?;
                Ok(File(raw))
            }
        }
        match serde_yaml::from_str::<File>(text) {
            Ok(File(mut raw)) => {
                raw.lift();
                Ok(raw)
            }
            Err(e) => {
                let message = e.to_string();
                let hint = KEYS.iter().filter(|k| k.doc.is_some()).find_map(|k| {
                    let flag = k.flag();
                    (flag != k.path && message.contains(&format!("unknown field `{flag}`")))
                        .then(|| format!(" (`{flag}` is a flag; in the file it is `{}`)", k.path))
                });
                Err(message + hint.as_deref().unwrap_or(""))
            }
        }
    }
}

/// Where a flag's value goes in the file, when that differs from the flag's name.
pub(super) fn file_place(flag: &str) -> Option<&'static str> {
    KEYS.iter()
        .find(|k| k.doc.is_some() && k.flag() == flag)
        .map(|k| k.path)
        .filter(|path| *path != flag)
}

/// A section of the file: the dotted prefix of some keys' places (`""` for the top level).
pub(super) struct Section {
    /// serde's name for it in errors: `FileConfig` for the top level, else `File` and its last segment in
    /// CamelCase (`FileRateLimit` for `api.rate-limit`).
    pub name: String,
    /// Its keys and sub-sections, in the order of [`KEYS`].
    pub children: Vec<Child>,
    /// The children's names, for "expected one of" in errors.
    pub names: Vec<&'static str>,
}

/// A key or sub-section of a [`Section`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Child {
    /// Its name in the section (`max-connections`).
    pub name: &'static str,
    /// Its dotted place (`api.limits.max-connections`).
    pub path: &'static str,
    /// A key (read by [`RawConfig::read_key`]) rather than a sub-section.
    pub leaf: bool,
}

impl Section {
    fn named(path: &str) -> Section {
        let last = path.rsplit('.').next().unwrap_or(path);
        let name = if path.is_empty() {
            "FileConfig".to_owned()
        } else {
            let camel: String = last
                .split('-')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            format!("File{camel}")
        };
        Section {
            name,
            children: Vec::new(),
            names: Vec::new(),
        }
    }
}

/// Every section of the file, by dotted place, built once from [`KEYS`] (keys lifted out of another module's
/// section are read by that section's own type, so they add nothing here).
pub(super) fn sections() -> &'static HashMap<&'static str, Section> {
    static SECTIONS: OnceLock<HashMap<&'static str, Section>> = OnceLock::new();
    SECTIONS.get_or_init(|| {
        let mut map: HashMap<&'static str, Section> = HashMap::new();
        for key in KEYS.iter().filter(|k| !k.embedded) {
            let path = key.path;
            let mut start = 0;
            loop {
                let end = path[start..].find('.').map_or(path.len(), |i| start + i);
                let parent = if start == 0 { "" } else { &path[..start - 1] };
                let section = map.entry(parent).or_insert_with(|| Section::named(parent));
                let name = &path[start..end];
                if !section.children.iter().any(|c| c.name == name) {
                    section.children.push(Child {
                        name,
                        path: &path[..end],
                        leaf: end == path.len(),
                    });
                    section.names.push(name);
                }
                if end == path.len() {
                    break;
                }
                start = end + 1;
            }
        }
        map
    })
}

/// A section's value, which may be absent (`~`) like the `Option` of a nested struct.
struct Seed<'a> {
    raw: &'a mut RawConfig,
    path: &'static str,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("option")
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        Fields::of(self.raw, self.path)?.deserialize(d)
    }
}

/// A section's mapping: each key read into its field, each sub-section walked in turn.
struct Fields<'a> {
    raw: &'a mut RawConfig,
    section: &'static Section,
}

impl<'a> Fields<'a> {
    fn of<E: de::Error>(raw: &'a mut RawConfig, path: &str) -> Result<Fields<'a>, E> {
        match sections().get(path) {
            Some(section) => Ok(Fields { raw, section }),
            None => Err(E::custom(format_args!("no section {path}"))),
        }
    }

    fn deserialize<'de, D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let (name, names) = (self.section.name.as_str(), self.section.names.as_slice());
        d.deserialize_struct(name, names, self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "struct {}", self.section.name)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let children = &self.section.children;
        let mut seen = vec![false; children.len()];
        while let Some(i) = map.next_key_seed(Name(self.section))? {
            let child = children[i];
            if std::mem::replace(&mut seen[i], true) {
                return Err(de::Error::duplicate_field(child.name));
            }
            if child.leaf {
                self.raw.read_key(child.path, &mut FromMap(&mut map))?;
            } else {
                map.next_value_seed(Seed {
                    raw: &mut *self.raw,
                    path: child.path,
                })?;
            }
        }
        Ok(())
    }

    /// serde's positional form of a struct: the children in order.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let children = &self.section.children;
        for (i, child) in children.iter().enumerate() {
            let present = if child.leaf {
                self.raw.read_key(child.path, &mut FromSeq(&mut seq))?
            } else {
                seq.next_element_seed(Seed {
                    raw: &mut *self.raw,
                    path: child.path,
                })?
                .is_some()
            };
            if !present {
                let expected = format!("struct {} with {} elements", self.section.name, children.len());
                return Err(de::Error::invalid_length(i, &expected.as_str()));
            }
        }
        Ok(())
    }
}

/// A key of a section: the index of its child, or the error naming what the section accepts.
struct Name(&'static Section);

impl<'de> DeserializeSeed<'de> for Name {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("field identifier")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        let n = self.0.children.len();
        usize::try_from(v).ok().filter(|i| *i < n).ok_or_else(|| {
            E::invalid_value(
                de::Unexpected::Unsigned(v),
                &format!("field index 0 <= i < {n}").as_str(),
            )
        })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        self.0
            .children
            .iter()
            .position(|c| c.name == v)
            .ok_or_else(|| E::unknown_field(v, &self.0.names))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<usize, E> {
        self.visit_str(&String::from_utf8_lossy(v))
    }
}

/// A key's value in a mapping.
struct FromMap<'a, A>(&'a mut A);

impl<'de, A: MapAccess<'de>> ValueSource<'de> for FromMap<'_, A> {
    type Error = A::Error;
    fn value<T: Deserialize<'de>>(&mut self) -> Result<Option<T>, A::Error> {
        self.0.next_value().map(Some)
    }
}

/// A key's value as the next element of a section written as a sequence.
struct FromSeq<'a, A>(&'a mut A);

impl<'de, A: SeqAccess<'de>> ValueSource<'de> for FromSeq<'_, A> {
    type Error = A::Error;
    fn value<T: Deserialize<'de>>(&mut self) -> Result<Option<T>, A::Error> {
        self.0.next_element()
    }
}
