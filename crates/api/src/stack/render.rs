//! `stack config`'s output, as `docker stack config` prints it: the merged configuration with
//! `version` (docker's latest, 3.13, when the files name none or `3`) and the top-level `x-`
//! extensions, in YAML whose strings a YAML 1.1 reader (docker's go-yaml) reads back as
//! strings: `yes`, `on`, `n` and their kin are quoted, as docker quotes them.

use super::Loaded;
use serde_json::Value as J;

/// The version `docker stack config` prints for a file without one.
pub const DEFAULT_VERSION: &str = "3.13";

/// The configuration as `stack config` shows it, as a JSON value.
pub fn value(loaded: &Loaded) -> J {
    let mut v = serde_json::to_value(&loaded.config).expect("config serializes");
    if let J::Object(top) = &mut v {
        let version = match top.remove("version") {
            None => J::String(DEFAULT_VERSION.into()),
            Some(J::String(v)) if v == "3" => J::String(DEFAULT_VERSION.into()),
            Some(v) => v,
        };
        let mut out = serde_json::Map::new();
        out.insert("version".into(), version);
        out.append(top);
        for (k, x) in &loaded.extensions {
            out.insert(k.clone(), x.clone());
        }
        return J::Object(out);
    }
    v
}

/// The configuration as `stack config` prints it, in YAML (keys in the loader's order, as
/// docker prints them).
pub fn yaml(loaded: &Loaded) -> String {
    let config = serde_yaml::to_value(&loaded.config).expect("config serializes");
    let mut out = serde_yaml::Mapping::new();
    // docker prints its newest format version for a file without one, or with `3`.
    let version = match loaded.config.version.as_deref() {
        None | Some("3") => DEFAULT_VERSION.to_owned(),
        Some(v) => v.to_owned(),
    };
    out.insert("version".into(), version.into());
    if let serde_yaml::Value::Mapping(top) = config {
        for (k, v) in top {
            if k.as_str() != Some("version") {
                out.insert(k, v);
            }
        }
    }
    for (k, x) in &loaded.extensions {
        out.insert(
            k.as_str().into(),
            serde_yaml::to_value(x).expect("extension serializes"),
        );
    }
    let text = serde_yaml::to_string(&out).expect("config serializes");
    quote_yaml11_words(&text)
}

/// Plain scalars that YAML 1.1 reads as booleans (serde_yaml, a YAML 1.2 writer, leaves them
/// plain; it quotes true, false, null and numbers itself).
const YAML11_BOOLS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

fn quote_word(word: &str) -> String {
    if YAML11_BOOLS.contains(&word) {
        format!("\"{word}\"")
    } else {
        word.to_owned()
    }
}

/// Quotes the YAML 1.1 booleans among the plain keys and values of serde_yaml's output; block
/// scalars (`|`, `>`) are left as they are.
pub fn quote_yaml11_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut block: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(b) = block {
            if indent > b || line.trim().is_empty() {
                out.push_str(line);
                out.push('\n');
                continue;
            }
            block = None;
        }
        let mut rest = &line[indent..];
        out.push_str(&line[..indent]);
        while let Some(r) = rest.strip_prefix("- ") {
            out.push_str("- ");
            rest = r;
        }
        let (key, value) = match split_key(rest) {
            Some((k, v)) => (Some(k), v),
            None => (None, rest),
        };
        if let Some(k) = key {
            out.push_str(&quote_word(k));
            out.push(':');
            if !value.is_empty() {
                out.push(' ');
            }
        }
        let v = value.trim_start();
        if ["|", "|-", "|+", ">", ">-", ">+"].contains(&v) {
            block = Some(indent);
            out.push_str(v);
        } else if rest == "-" {
            out.push('-');
        } else {
            out.push_str(&quote_word(v));
        }
        out.push('\n');
    }
    out
}

/// `key: value` or `key:` with a plain key: the key and the value (empty for `key:`).
fn split_key(s: &str) -> Option<(&str, &str)> {
    if s.starts_with(['"', '\'']) {
        return None;
    }
    if let Some(k) = s.strip_suffix(':') {
        return (!k.contains(": ")).then_some((k, ""));
    }
    let (k, v) = s.split_once(": ")?;
    Some((k, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_1_1_booleans_are_quoted_keys_and_values_and_blocks_are_left_alone() {
        let text = "n:\n  driver_opts:\n    o: yes\n  labels:\n  - on\n  - 'x'\n  ok: fine\nscript: |-\n  a: yes\n  on\nafter: Off\n";
        assert_eq!(
            quote_yaml11_words(text),
            "\"n\":\n  driver_opts:\n    o: \"yes\"\n  labels:\n  - \"on\"\n  - 'x'\n  ok: fine\nscript: |-\n  a: yes\n  on\nafter: \"Off\"\n"
        );
    }
}
