//! A strict validator for the JSON Schema subset central's generated OpenAPI document uses
//! (utoipa's output): `$ref`, `type` (one or several, `null` among them), `properties`,
//! `required`, `additionalProperties`, `propertyNames`, `items`, `allOf`, `oneOf`, `enum`,
//! `format` (`date-time` checked), `minimum`, `maximum`. Stricter than JSON Schema where it
//! matters for a contract test: an object schema with `properties` allows no other field unless
//! it says `additionalProperties`, and the parts of an `allOf` are one object together. A
//! keyword it does not know is an error, so a new generator feature cannot slip past unchecked.

use serde_json::{Map, Value};

/// Keywords that only describe and never constrain.
const DESCRIPTIVE: &[&str] = &["description", "default", "title", "example", "examples"];

/// Checks `value` against `schema`; `components` are the document's `components.schemas`.
/// Returns every violation, each with its JSON path.
pub fn validate(value: &Value, schema: &Value, components: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    Validator { components }.check(value, schema, "$", &mut errors);
    errors
}

struct Validator<'a> {
    components: &'a Value,
}

impl Validator<'_> {
    fn resolve<'s>(&'s self, schema: &'s Value) -> Result<&'s Value, String> {
        let mut schema = schema;
        for _ in 0..32 {
            let Some(reference) = schema.get("$ref") else {
                return Ok(schema);
            };
            let name = reference
                .as_str()
                .and_then(|r| r.strip_prefix("#/components/schemas/"))
                .ok_or_else(|| format!("unsupported $ref {reference}"))?;
            schema = self
                .components
                .get(name)
                .ok_or_else(|| format!("$ref to unknown schema {name}"))?;
        }
        Err("$ref chain too long".into())
    }

    fn check(&self, value: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
        let schema = match self.resolve(schema) {
            Ok(schema) => schema,
            Err(e) => return errors.push(format!("{path}: {e}")),
        };
        let Some(keywords) = schema.as_object() else {
            return errors.push(format!("{path}: schema is not an object: {schema}"));
        };
        for keyword in keywords.keys() {
            let known = DESCRIPTIVE.contains(&keyword.as_str())
                || [
                    "$ref",
                    "type",
                    "properties",
                    "required",
                    "additionalProperties",
                    "propertyNames",
                    "items",
                    "allOf",
                    "oneOf",
                    "enum",
                    "format",
                    "minimum",
                    "maximum",
                ]
                .contains(&keyword.as_str());
            if !known {
                errors.push(format!(
                    "{path}: the validator does not know the schema keyword {keyword:?}; teach it"
                ));
            }
        }
        if let Some(parts) = keywords.get("allOf") {
            return self.check_all_of(value, parts, path, errors);
        }
        if let Some(branches) = keywords.get("oneOf") {
            return self.check_one_of(value, branches, path, errors);
        }
        if let Some(types) = keywords.get("type") {
            let types: Vec<&str> = match types {
                Value::String(t) => vec![t.as_str()],
                Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
                other => return errors.push(format!("{path}: bad `type` {other}")),
            };
            if !types.iter().any(|t| has_type(value, t)) {
                return errors.push(format!(
                    "{path}: expected {}, found {}",
                    types.join(" or "),
                    kind(value)
                ));
            }
        }
        if let Some(allowed) = keywords.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                errors.push(format!("{path}: {value} is not one of {allowed:?}"));
            }
        }
        if let (Some(format), Some(text)) = (
            keywords.get("format").and_then(Value::as_str),
            value.as_str(),
        ) {
            if format == "date-time" && !is_rfc3339(text) {
                errors.push(format!("{path}: {text:?} is not an RFC 3339 date-time"));
            }
        }
        if let Some(number) = value.as_f64() {
            if let Some(min) = keywords.get("minimum").and_then(Value::as_f64) {
                if number < min {
                    errors.push(format!("{path}: {number} is below the minimum {min}"));
                }
            }
            if let Some(max) = keywords.get("maximum").and_then(Value::as_f64) {
                if number > max {
                    errors.push(format!("{path}: {number} is above the maximum {max}"));
                }
            }
        }
        match value {
            Value::Object(object) => self.check_object(object, keywords, path, errors),
            Value::Array(items) => {
                if let Some(item_schema) = keywords.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.check(item, item_schema, &format!("{path}[{i}]"), errors);
                    }
                }
            }
            _ => {}
        }
    }

    /// Properties: the required ones present, each checked, no other unless
    /// `additionalProperties` says so. An object schema without `properties` is free-form.
    fn check_object(
        &self,
        object: &Map<String, Value>,
        keywords: &Map<String, Value>,
        path: &str,
        errors: &mut Vec<String>,
    ) {
        let properties = keywords.get("properties").and_then(Value::as_object);
        for required in keywords
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !object.contains_key(required) {
                errors.push(format!("{path}: required field {required:?} is missing"));
            }
        }
        for (name, field) in object {
            let field_path = format!("{path}.{name}");
            match (
                properties.and_then(|p| p.get(name)),
                keywords.get("additionalProperties"),
            ) {
                (Some(field_schema), _) => self.check(field, field_schema, &field_path, errors),
                (None, Some(Value::Bool(true))) => {}
                (None, Some(Value::Bool(false))) => {
                    errors.push(format!("{field_path}: field not in the schema"))
                }
                (None, Some(extra)) => self.check(field, extra, &field_path, errors),
                (None, None) if properties.is_some() => {
                    errors.push(format!("{field_path}: field not in the schema"))
                }
                (None, None) => {}
            }
        }
        if let Some(names) = keywords.get("propertyNames") {
            for name in object.keys() {
                self.check(
                    &Value::String(name.clone()),
                    names,
                    &format!("{path} (key {name:?})"),
                    errors,
                );
            }
        }
    }

    /// The parts together describe one object: their properties and required fields merge, and
    /// the value is checked strictly against the merged schema.
    fn check_all_of(&self, value: &Value, parts: &Value, path: &str, errors: &mut Vec<String>) {
        let Some(parts) = parts.as_array() else {
            return errors.push(format!("{path}: `allOf` is not a list"));
        };
        let mut properties = Map::new();
        let mut required = Vec::new();
        for part in parts {
            let part = match self.resolve(part) {
                Ok(part) => part,
                Err(e) => return errors.push(format!("{path}: {e}")),
            };
            if part.get("allOf").is_some() || part.get("oneOf").is_some() {
                return errors.push(format!("{path}: nested allOf/oneOf in allOf not supported"));
            }
            if let Some(p) = part.get("properties").and_then(Value::as_object) {
                properties.extend(p.clone());
            }
            if let Some(r) = part.get("required").and_then(Value::as_array) {
                required.extend(r.iter().cloned());
            }
        }
        let merged = serde_json::json!({
            "type": "object",
            "properties": properties,
            "required": required,
        });
        self.check(value, &merged, path, errors);
    }

    /// Exactly one branch matches.
    fn check_one_of(&self, value: &Value, branches: &Value, path: &str, errors: &mut Vec<String>) {
        let Some(branches) = branches.as_array() else {
            return errors.push(format!("{path}: `oneOf` is not a list"));
        };
        let mut failures = Vec::new();
        let mut matched = 0;
        for (i, branch) in branches.iter().enumerate() {
            let mut branch_errors = Vec::new();
            self.check(value, branch, path, &mut branch_errors);
            if branch_errors.is_empty() {
                matched += 1;
            } else {
                failures.push(format!("branch {i}: {}", branch_errors.join("; ")));
            }
        }
        match matched {
            1 => {}
            0 => errors.push(format!(
                "{path}: matches no branch of oneOf ({})",
                failures.join(" | ")
            )),
            n => errors.push(format!("{path}: matches {n} branches of oneOf, not one")),
        }
    }
}

fn has_type(value: &Value, wanted: &str) -> bool {
    match wanted {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `YYYY-MM-DDTHH:MM:SS`, optional fraction, then `Z` or `±HH:MM`.
fn is_rfc3339(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if !(digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && matches!(b.get(10), Some(b'T' | b't'))
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19))
    {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return false;
        }
        rest = &fraction[end..];
    }
    matches!(rest, "Z" | "z")
        || (rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest[1..3].bytes().all(|c| c.is_ascii_digit())
            && &rest[3..4] == ":"
            && rest[4..].bytes().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn components() -> Value {
        json!({
            "Point": {
                "type": "object",
                "required": ["latitude", "longitude"],
                "properties": {
                    "latitude": { "type": "number", "format": "double" },
                    "longitude": { "type": "number", "format": "double" }
                }
            },
            "Named": {
                "type": "object",
                "required": ["name", "at"],
                "properties": {
                    "name": { "type": "string" },
                    "at": { "type": "string", "format": "date-time" },
                    "state": { "type": "string", "enum": ["on", "off"] },
                    "count": { "type": "integer", "minimum": 0 }
                }
            }
        })
    }

    fn errors(value: Value, schema: Value) -> Vec<String> {
        validate(&value, &schema, &components())
    }

    #[test]
    fn a_matching_object_passes() {
        let point = json!({ "$ref": "#/components/schemas/Point" });
        assert_eq!(
            errors(json!({ "latitude": 1.5, "longitude": 2 }), point),
            Vec::<String>::new()
        );
    }

    #[test]
    fn an_extra_field_fails() {
        let point = json!({ "$ref": "#/components/schemas/Point" });
        let found = errors(
            json!({ "latitude": 1.5, "longitude": 2, "altitude": 3 }),
            point,
        );
        assert_eq!(found, ["$.altitude: field not in the schema"]);
    }

    #[test]
    fn a_missing_required_field_fails() {
        let point = json!({ "$ref": "#/components/schemas/Point" });
        let found = errors(json!({ "latitude": 1.5 }), point);
        assert_eq!(found, ["$: required field \"longitude\" is missing"]);
    }

    #[test]
    fn a_wrong_type_fails_and_names_the_path() {
        let list = json!({ "type": "array", "items": { "$ref": "#/components/schemas/Point" } });
        let found = errors(json!([{ "latitude": "north", "longitude": 2 }]), list);
        assert_eq!(found, ["$[0].latitude: expected number, found string"]);
        assert_eq!(
            errors(json!(1.5), json!({ "type": "integer" })),
            ["$: expected integer, found number"]
        );
    }

    #[test]
    fn null_passes_only_where_the_type_allows_it() {
        let nullable = json!({ "type": ["string", "null"] });
        assert!(errors(json!(null), nullable).is_empty());
        assert!(!errors(json!(null), json!({ "type": "string" })).is_empty());
    }

    #[test]
    fn one_of_needs_exactly_one_branch() {
        let optional_point = json!({ "oneOf": [
            { "type": "null" },
            { "$ref": "#/components/schemas/Point" }
        ]});
        assert!(errors(json!(null), optional_point.clone()).is_empty());
        assert!(errors(
            json!({ "latitude": 1, "longitude": 2 }),
            optional_point.clone()
        )
        .is_empty());
        assert!(!errors(json!({ "latitude": 1 }), optional_point).is_empty());
        let overlapping = json!({ "oneOf": [{ "type": "integer" }, { "type": "number" }] });
        assert!(!errors(json!(1), overlapping).is_empty());
    }

    #[test]
    fn all_of_parts_are_one_strict_object() {
        let with_height = json!({ "allOf": [
            { "$ref": "#/components/schemas/Point" },
            { "type": "object", "required": ["height"], "properties": { "height": { "type": "number" } } }
        ]});
        assert!(errors(
            json!({ "latitude": 1, "longitude": 2, "height": 3 }),
            with_height.clone()
        )
        .is_empty());
        assert_eq!(
            errors(
                json!({ "latitude": 1, "longitude": 2 }),
                with_height.clone()
            ),
            ["$: required field \"height\" is missing"]
        );
        assert_eq!(
            errors(
                json!({ "latitude": 1, "longitude": 2, "height": 3, "depth": 4 }),
                with_height
            ),
            ["$.depth: field not in the schema"]
        );
    }

    #[test]
    fn maps_enums_formats_and_ranges_are_checked() {
        let map = json!({ "type": "object", "additionalProperties": { "type": "integer" } });
        assert!(errors(json!({ "a": 1, "b": 2 }), map.clone()).is_empty());
        assert_eq!(
            errors(json!({ "a": "x" }), map),
            ["$.a: expected integer, found string"]
        );
        let named = json!({ "$ref": "#/components/schemas/Named" });
        assert!(errors(
            json!({ "name": "n", "at": "2026-01-31T12:00:00Z", "state": "on", "count": 0 }),
            named.clone()
        )
        .is_empty());
        let found = errors(
            json!({ "name": "n", "at": "yesterday", "state": "dim", "count": -1 }),
            named,
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(is_rfc3339("2026-01-31T12:00:00.25+01:00"));
        assert!(!is_rfc3339("2026-01-31 12:00:00Z"));
    }

    #[test]
    fn an_unknown_keyword_is_an_error_not_a_pass() {
        let found = errors(json!("x"), json!({ "type": "string", "pattern": "^y$" }));
        assert_eq!(found.len(), 1);
        assert!(found[0].contains("\"pattern\""), "{found:?}");
    }

    #[test]
    fn a_free_form_object_takes_any_field() {
        assert!(errors(json!({ "anything": [1, 2] }), json!({ "type": "object" })).is_empty());
    }
}
