//! The schema catalog: every `avro/**/*.avsc` file is the value schema of one topic whose name
//! is the file's path with `/` replaced by `.` (`avro/public/user/message.events.avsc` is topic
//! `public.user.message.events`, subject `public.user.message.events-value`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apache_avro::Schema;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("schema {path} is not valid Avro: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("schema {path}: the top-level type must be a record")]
    NotARecord { path: PathBuf },
}

/// The field attribute marking a field as the poster's identity.
pub const IDENTITY_ATTRIBUTE: &str = "identity";

/// One topic's value schema.
#[derive(Debug, Clone)]
pub struct TopicSchema {
    pub topic: String,
    pub path: PathBuf,
    /// The schema text as written (what is registered).
    pub text: String,
    pub schema: Arc<Schema>,
    /// Named types of `schema`, resolved once for JSON conversion.
    pub names: Arc<crate::json::NamedTypes>,
}

impl TopicSchema {
    fn new(
        topic: String,
        path: PathBuf,
        text: String,
        schema: Schema,
    ) -> Result<Self, CatalogError> {
        let names = crate::json::named_types(&schema).map_err(|message| CatalogError::Parse {
            path: path.clone(),
            message,
        })?;
        Ok(Self {
            topic,
            path,
            text,
            schema: Arc::new(schema),
            names: Arc::new(names),
        })
    }

    /// Validates `json` against this schema and converts it.
    pub fn to_avro(
        &self,
        json: &serde_json::Value,
    ) -> Result<apache_avro::types::Value, crate::FieldError> {
        crate::json::json_to_avro_with(&self.schema, &self.names, json)
    }

    pub fn subject(&self) -> String {
        subject_for(&self.topic)
    }

    /// Names of the top-level record fields.
    pub fn field_names(&self) -> Vec<&str> {
        match self.schema.as_ref() {
            Schema::Record(record) => record.fields.iter().map(|f| f.name.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    /// Top-level fields the schema declares as the poster's identity (`"identity": true`, or the
    /// JWT claim that fills it, e.g. `"identity": "sub"`): a client must never choose them.
    pub fn identity_fields(&self) -> Vec<&str> {
        match self.schema.as_ref() {
            Schema::Record(record) => record
                .fields
                .iter()
                .filter(|f| {
                    f.custom_attributes
                        .get(IDENTITY_ATTRIBUTE)
                        .is_some_and(|v| v.as_bool() == Some(true) || v.is_string())
                })
                .map(|f| f.name.as_str())
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn has_field(&self, name: &str) -> bool {
        match self.schema.as_ref() {
            Schema::Record(record) => record.lookup.contains_key(name),
            _ => false,
        }
    }
}

/// TopicNameStrategy subject of a topic's values.
pub fn subject_for(topic: &str) -> String {
    format!("{topic}-value")
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    topics: BTreeMap<String, TopicSchema>,
}

impl Catalog {
    /// Reads every `*.avsc` below `root`.
    pub fn load(root: &Path) -> Result<Self, CatalogError> {
        let mut files = Vec::new();
        collect(root, &mut files)?;
        files.sort();
        let mut topics = BTreeMap::new();
        for path in files {
            let entry = Self::load_file(root, &path)?;
            topics.insert(entry.topic.clone(), entry);
        }
        Ok(Self { topics })
    }

    fn load_file(root: &Path, path: &Path) -> Result<TopicSchema, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let schema = Schema::parse_str(&text).map_err(|e| CatalogError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if !matches!(schema, Schema::Record(_)) {
            return Err(CatalogError::NotARecord {
                path: path.to_path_buf(),
            });
        }
        TopicSchema::new(topic_for(root, path), path.to_path_buf(), text, schema)
    }

    pub fn get(&self, topic: &str) -> Option<&TopicSchema> {
        self.topics.get(topic)
    }

    pub fn topics(&self) -> impl Iterator<Item = &TopicSchema> {
        self.topics.values()
    }

    pub fn len(&self) -> usize {
        self.topics.len()
    }

    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// Adds a schema for `topic` (tests and tools that make topics of their own).
    pub fn insert(&mut self, topic: &str, text: &str) -> Result<(), CatalogError> {
        let path = PathBuf::from(format!("<inline:{topic}>"));
        let schema = Schema::parse_str(text).map_err(|e| CatalogError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let entry = TopicSchema::new(topic.to_string(), path, text.to_string(), schema)?;
        self.topics.insert(topic.to_string(), entry);
        Ok(())
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CatalogError> {
    let entries = std::fs::read_dir(dir).map_err(|source| CatalogError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| CatalogError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "avsc") {
            out.push(path);
        }
    }
    Ok(())
}

fn topic_for(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let text = relative.to_string_lossy();
    let text = text.strip_suffix(".avsc").unwrap_or(&text);
    text.replace(['/', '\\'], ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_avro() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../avro")
    }

    #[test]
    fn discovers_the_repository_schemas_by_path() {
        let catalog = Catalog::load(&repo_avro()).unwrap();
        let message = catalog.get("public.user.message.events").unwrap();
        assert_eq!(message.subject(), "public.user.message.events-value");
        assert!(message.has_field("recipient_id"));
        assert!(catalog.get("public.identity.login.events").is_some());
        for topic in catalog.topics() {
            assert!(
                topic.topic.starts_with("public.") || topic.topic.starts_with("internal."),
                "{} must be public.* or internal.*",
                topic.topic
            );
        }
    }
}
