//! Reads the pin in this directory's rust-toolchain.toml. Shared, through
//! `#[path]`, by imds-monitor/build.rs (which builds with the pin) and xtask's
//! setup (which installs it): both must read the file the same way.

/// `channel` of a rust-toolchain.toml: the quoted value of its `channel` key.
pub fn toolchain_channel(text: &str) -> Option<&str> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        if key.trim() != "channel" {
            return None;
        }
        let value = value.trim();
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let (name, _) = value[1..].split_once(quote)?;
        (!name.is_empty()).then_some(name)
    })
}
