//! The data store: one JSON document, replaced by `PUT /mmds`, merged into
//! by `PATCH /mmds` (RFC 7396), read by the guest through JSON pointers.
//!
//! Its serialized size never exceeds the limit (`--mmds-size-limit`,
//! Firecracker's default 51200 bytes): an update that would pass it is
//! refused and the store stays as it was.

use std::net::Ipv4Addr;

use serde_json::{Map, Value};

use crate::token::TokenAuthority;

/// Firecracker's default data store limit, bytes (also its default API
/// payload limit).
pub const DEFAULT_SIZE_LIMIT: usize = 51200;
/// The MMDS address unless `mmds-config` names another.
pub const DEFAULT_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// How the guest must ask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MmdsVersion {
    /// `GET` without a session (tokens are accepted and not checked).
    #[default]
    V1,
    /// Every `GET` carries a token from `PUT /latest/api/token`.
    V2,
}

/// Why the store refused an update or a read; the texts are Firecracker's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The update would make the store larger than its limit.
    #[error("The MMDS patch request doesn't fit.")]
    TooLarge,
    /// `PATCH` before any `PUT`.
    #[error("The MMDS data store is not initialized.")]
    NotInitialized,
    /// No value at that path.
    #[error("The MMDS resource does not exist.")]
    NotFound,
    /// IMDS format asked for a number, boolean, null or array.
    #[error("Cannot retrieve value. The value has an unsupported type.")]
    UnsupportedValueType,
}

/// Which representation the guest gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// The value as compact JSON.
    Json,
    /// EC2 IMDS text: an object's keys one per line (sub-objects with a
    /// trailing `/`), a string as itself.
    Imds,
}

/// The metadata service's state.
#[derive(Debug)]
pub struct Mmds {
    data: Value,
    initialized: bool,
    size_limit: usize,
    version: MmdsVersion,
    imds_compat: bool,
    tokens: TokenAuthority,
}

impl Mmds {
    /// An empty, uninitialized V1 store holding at most `size_limit`
    /// bytes of serialized JSON.
    pub fn new(size_limit: usize) -> Self {
        Self {
            data: Value::Null,
            initialized: false,
            size_limit,
            version: MmdsVersion::V1,
            imds_compat: false,
            tokens: TokenAuthority::default(),
        }
    }

    /// The serialized size limit, bytes.
    pub fn size_limit(&self) -> usize {
        self.size_limit
    }

    /// The guest-facing settings of `mmds-config`. Changing the version
    /// forgets every token.
    pub fn configure(&mut self, version: MmdsVersion, imds_compat: bool) {
        if version != self.version {
            self.tokens = TokenAuthority::default();
        }
        self.version = version;
        self.imds_compat = imds_compat;
    }

    /// V1 or V2.
    pub fn version(&self) -> MmdsVersion {
        self.version
    }

    /// Whether the guest always gets IMDS text, whatever it accepts.
    pub fn imds_compat(&self) -> bool {
        self.imds_compat
    }

    /// The session tokens (V2).
    pub fn tokens(&mut self) -> &mut TokenAuthority {
        &mut self.tokens
    }

    /// `PUT /mmds` and `--metadata`: replaces the whole document.
    pub fn put(&mut self, data: Value) -> Result<(), StoreError> {
        self.check_size(&data)?;
        self.data = data;
        self.initialized = true;
        Ok(())
    }

    /// `PATCH /mmds`: a JSON merge patch (RFC 7396) over the document.
    pub fn patch(&mut self, patch: &Value) -> Result<(), StoreError> {
        if !self.initialized {
            return Err(StoreError::NotInitialized);
        }
        let mut patched = self.data.clone();
        merge_patch(&mut patched, patch);
        self.check_size(&patched)?;
        self.data = patched;
        Ok(())
    }

    /// `GET /mmds`: the document, `{}` while nothing was put.
    pub fn to_json(&self) -> Value {
        match &self.data {
            Value::Null => Value::Object(Map::new()),
            data => data.clone(),
        }
    }

    /// The guest's read of `path` (a request path: `/a/b`, a trailing `/`
    /// allowed, repeated slashes collapsed).
    pub fn get(&self, path: &str, format: OutputFormat) -> Result<String, StoreError> {
        let pointer = json_pointer(path);
        let value = self.data.pointer(&pointer).ok_or(StoreError::NotFound)?;
        match format {
            OutputFormat::Json => Ok(value.to_string()),
            OutputFormat::Imds => imds_text(value),
        }
    }

    fn check_size(&self, data: &Value) -> Result<(), StoreError> {
        // Serializing a Value cannot fail (its keys are strings).
        let len = serde_json::to_vec(data).map_or(usize::MAX, |bytes| bytes.len());
        if len > self.size_limit {
            return Err(StoreError::TooLarge);
        }
        Ok(())
    }
}

/// RFC 7396: objects merge key by key, `null` removes a key, anything
/// else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(changes) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(doc) = target {
        for (key, value) in changes {
            if value.is_null() {
                doc.remove(key);
            } else {
                merge_patch(doc.entry(key.as_str()).or_insert(Value::Null), value);
            }
        }
    }
}

/// A request path as a JSON pointer: repeated slashes collapsed, one
/// trailing slash dropped (`/a//b/` is `/a/b`; `/` is the whole document).
fn json_pointer(path: &str) -> String {
    let mut pointer = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        pointer.push('/');
        pointer.push_str(segment);
    }
    pointer
}

fn imds_text(value: &Value) -> Result<String, StoreError> {
    match value {
        Value::Object(map) => Ok(map
            .iter()
            .map(|(key, value)| match value {
                Value::Object(_) => format!("{key}/"),
                _ => key.clone(),
            })
            .collect::<Vec<_>>()
            .join("\n")),
        Value::String(text) => Ok(text.clone()),
        _ => Err(StoreError::UnsupportedValueType),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn store() -> Mmds {
        let mut mmds = Mmds::new(DEFAULT_SIZE_LIMIT);
        mmds.put(json!({
            "latest": {"meta-data": {"ami-id": "ami-1", "net": {"mac": "aa"}}},
            "age": 43,
            "list": ["a", "b"],
        }))
        .unwrap();
        mmds
    }

    #[test]
    fn empty_store_reads_as_an_empty_object_and_refuses_a_patch() {
        let mut mmds = Mmds::new(DEFAULT_SIZE_LIMIT);
        assert_eq!(mmds.to_json(), json!({}));
        assert_eq!(
            mmds.patch(&json!({"a": 1})),
            Err(StoreError::NotInitialized)
        );
        assert_eq!(
            mmds.get("/a", OutputFormat::Json),
            Err(StoreError::NotFound)
        );
    }

    #[test]
    fn imds_lists_keys_with_slashes_for_objects_and_strings_plain() {
        let mmds = store();
        assert_eq!(
            mmds.get("/latest/meta-data", OutputFormat::Imds).unwrap(),
            "ami-id\nnet/"
        );
        assert_eq!(
            mmds.get("/latest/meta-data/", OutputFormat::Imds).unwrap(),
            "ami-id\nnet/"
        );
        assert_eq!(
            mmds.get("//latest//meta-data/ami-id", OutputFormat::Imds)
                .unwrap(),
            "ami-1"
        );
        assert_eq!(
            mmds.get("/age", OutputFormat::Imds),
            Err(StoreError::UnsupportedValueType)
        );
        assert_eq!(
            mmds.get("/list", OutputFormat::Imds),
            Err(StoreError::UnsupportedValueType)
        );
        assert_eq!(
            mmds.get("/nope", OutputFormat::Imds),
            Err(StoreError::NotFound)
        );
    }

    #[test]
    fn json_format_is_compact_json_of_any_value() {
        let mmds = store();
        assert_eq!(
            mmds.get("/latest/meta-data/ami-id", OutputFormat::Json)
                .unwrap(),
            "\"ami-1\""
        );
        assert_eq!(mmds.get("/age", OutputFormat::Json).unwrap(), "43");
        assert_eq!(mmds.get("/list/1", OutputFormat::Json).unwrap(), "\"b\"");
        assert_eq!(
            mmds.get("/latest/meta-data/net", OutputFormat::Json)
                .unwrap(),
            r#"{"mac":"aa"}"#
        );
    }

    #[test]
    fn patch_merges_removes_with_null_and_replaces_non_objects() {
        let mut mmds = store();
        mmds.patch(
            &json!({"latest": {"meta-data": {"ami-id": "ami-2", "net": null}}, "age": {"y": "1"}}),
        )
        .unwrap();
        assert_eq!(
            mmds.to_json(),
            json!({"latest": {"meta-data": {"ami-id": "ami-2"}}, "age": {"y": "1"}, "list": ["a", "b"]})
        );
    }

    #[test]
    fn updates_over_the_limit_are_refused_and_leave_the_store_as_it_was() {
        let mut mmds = Mmds::new(20);
        mmds.put(json!({"a": "1"})).unwrap();
        assert_eq!(
            mmds.put(json!({"a": "x".repeat(30)})),
            Err(StoreError::TooLarge)
        );
        assert_eq!(
            mmds.patch(&json!({"b": "y".repeat(30)})),
            Err(StoreError::TooLarge)
        );
        assert_eq!(mmds.to_json(), json!({"a": "1"}));
        assert_eq!(
            StoreError::TooLarge.to_string(),
            "The MMDS patch request doesn't fit."
        );
    }
}
