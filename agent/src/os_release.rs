//! What the running OS says about itself in `/etc/os-release` (`VERSION_ID` for updates,
//! `PRETTY_NAME` for the facts).

/// `KEY=value` from os-release text, unquoted.
pub fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some(unquoted.replace("\\\"", "\""))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_found_and_unquoted() {
        let os = "NAME=\"Cairn\"\nVERSION_ID=\"0.2.0\"\nID=cairn\n";
        assert_eq!(os_release_value(os, "VERSION_ID").as_deref(), Some("0.2.0"));
        assert_eq!(os_release_value(os, "ID").as_deref(), Some("cairn"));
        assert_eq!(os_release_value(os, "VERSION"), None);
    }
}
