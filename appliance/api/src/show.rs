//! Numbers the way a person reads them in a table or a status line.

/// A span of seconds: 42s, 17m, 5h, 3d.
pub fn age(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        7200..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Bytes in MB, or GB from a thousand MB on.
pub fn bytes(n: u64) -> String {
    const G: f64 = 1e9;
    const M: f64 = 1e6;
    if n as f64 >= G {
        format!("{:.1} GB", n as f64 / G)
    } else {
        format!("{:.1} MB", n as f64 / M)
    }
}
