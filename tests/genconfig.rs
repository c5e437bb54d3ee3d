//! Issue 17, `wspush genconfig`: it prints conf/app.ini, the commented example, which parses to
//! the defaults of every key and names every key wspush reads (`Config::values`), so the two
//! cannot drift apart.

use std::process::Command;
use wspush::config::Config;

fn genconfig() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_wspush"))
        .arg("genconfig")
        .output()
        .expect("run wspush genconfig");
    assert!(
        out.status.success(),
        "genconfig: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("genconfig prints UTF-8")
}

#[test]
fn genconfig_prints_conf_app_ini_and_it_parses_to_the_defaults() {
    let text = genconfig();
    let shipped = std::fs::read_to_string("conf/app.ini").expect("conf/app.ini");
    assert_eq!(text, shipped, "genconfig prints conf/app.ini as it is");
    let parsed = match Config::parse(&text) {
        Ok(config) => config,
        Err(e) => panic!("genconfig's output does not parse: {e}"),
    };
    assert!(
        parsed.validate().is_ok(),
        "genconfig's output does not validate"
    );
    let (got, want) = (parsed.values(), Config::default().values());
    for ((key, value), (_, default)) in got.iter().zip(&want) {
        assert_eq!(
            value, default,
            "{key}: genconfig gives {value:?}, the default is {default:?}"
        );
    }
    assert_eq!(got.len(), want.len());
}

/// Every key of `Config::values` has a `Key = value` line in its section, set or (for a key
/// whose default is empty or computed) commented out with `;`.
#[test]
fn genconfig_names_every_key_in_its_section() {
    let text = genconfig();
    let mut section = String::new();
    let mut seen = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let line = line.strip_prefix(';').map_or(line, str::trim);
        if let Some((key, _)) = line.split_once('=') {
            let key = key.trim();
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()) {
                seen.push(format!("{section}.{key}"));
            }
        }
    }
    for (key, _) in Config::default().values() {
        assert!(
            seen.iter().any(|k| k == key),
            "{key} is missing from genconfig's output (conf/app.ini)"
        );
    }
}
