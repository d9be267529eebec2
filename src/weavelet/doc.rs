//! Names and documents. A document is one JSON object of parameters;
//! parameter and target names match `[A-Za-z0-9_.-]{1,128}` (a target may
//! not start with `.`: it names a file in the state dir).

use serde_json::{Map, Value};

use super::MAX_DOC;

/// One effective document: parameter name -> value.
pub type Doc = Map<String, Value>;

/// Longest parameter or target name.
pub const MAX_NAME: usize = 128;

fn name_chars(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A parameter name, or why not.
pub fn check_param(name: &str) -> Result<(), String> {
    if name_chars(name) {
        Ok(())
    } else {
        Err(format!("bad parameter name {name:?}: use 1 to {MAX_NAME} of A-Z a-z 0-9 _ . -"))
    }
}

/// A target name, or why not.
pub fn check_target(name: &str) -> Result<(), String> {
    if name_chars(name) && !name.starts_with('.') {
        Ok(())
    } else {
        Err(format!(
            "bad target name {name:?}: use 1 to {MAX_NAME} of A-Z a-z 0-9 _ . -, not starting with ."
        ))
    }
}

/// A whole document: every name valid and at most [`MAX_DOC`] bytes as
/// compact JSON.
pub fn check_doc(doc: &Doc) -> Result<(), String> {
    for k in doc.keys() {
        check_param(k)?;
    }
    let size = encoded_len(doc);
    if size > MAX_DOC {
        return Err(format!("the document would be {size} bytes, over the {MAX_DOC}-byte limit"));
    }
    Ok(())
}

/// Bytes of `doc` as compact JSON.
pub fn encoded_len(doc: &Doc) -> usize {
    serde_json::to_vec(doc).map_or(usize::MAX, |v| v.len())
}

/// A command-line value: a JSON scalar (or array or object) when it parses
/// as one (`0.01`, `true`, `null`, `"x"`, `[1,2]`), else the text as a
/// string (`adam`).
pub fn parse_value(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => v,
        Err(_) => Value::String(text.to_string()),
    }
}

/// `KEY=VALUE` from the command line.
pub fn parse_assignment(arg: &str) -> Result<(String, Value), String> {
    let Some((k, v)) = arg.split_once('=') else {
        return Err(format!("{arg:?} is not KEY=VALUE"));
    };
    check_param(k)?;
    Ok((k.to_string(), parse_value(v)))
}

/// Keys whose value differs between `old` and `new` (added, changed or
/// removed), sorted.
pub fn changed_keys(old: &Doc, new: &Doc) -> Vec<String> {
    let mut out: Vec<String> =
        new.iter().filter(|(k, v)| old.get(*k) != Some(v)).map(|(k, _)| k.clone()).collect();
    out.extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names() {
        for ok in ["lr", "optimizer.beta_1", "a-b", "X9"] {
            assert!(check_param(ok).is_ok(), "{ok}");
            assert!(check_target(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", "a=b", &"x".repeat(129)] {
            assert!(check_param(bad).is_err(), "{bad}");
            assert!(check_target(bad).is_err(), "{bad}");
        }
        assert!(check_param(".x").is_ok());
        assert!(check_target(".x").is_err() && check_target("..").is_err());
    }

    #[test]
    fn values_parse_as_json_when_they_can() {
        assert_eq!(parse_value("0.01"), json!(0.01));
        assert_eq!(parse_value("true"), json!(true));
        assert_eq!(parse_value("adam"), json!("adam"));
        assert_eq!(parse_value("\"true\""), json!("true"));
        assert_eq!(parse_value("[1,2]"), json!([1, 2]));
        assert_eq!(parse_value(""), json!(""));
        assert_eq!(parse_assignment("lr=1e-3").unwrap(), ("lr".into(), json!(1e-3)));
        assert_eq!(parse_assignment("s=a=b").unwrap(), ("s".into(), json!("a=b")));
        assert!(parse_assignment("lr").is_err());
        assert!(parse_assignment("l r=1").is_err());
    }

    #[test]
    fn documents_are_bounded_and_changes_are_keys() {
        let mut d = Doc::new();
        d.insert("a".into(), json!("x".repeat(MAX_DOC)));
        assert!(check_doc(&d).unwrap_err().contains("limit"));
        let old: Doc = serde_json::from_value(json!({"a": 1, "b": 2, "c": 3})).unwrap();
        let new: Doc = serde_json::from_value(json!({"a": 1, "b": 5, "d": 4})).unwrap();
        assert_eq!(changed_keys(&old, &new), ["b", "c", "d"]);
        assert!(changed_keys(&new, &new).is_empty());
        let mut bad = Doc::new();
        bad.insert("a b".into(), json!(1));
        assert!(check_doc(&bad).is_err());
    }
}
