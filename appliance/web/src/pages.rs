//! The panel's server-rendered pages: login, the one-time setup form and the dashboard.
//! Every value is escaped where it is written, and no page carries script, so each works in
//! any browser and the strict CSP leaves an injected value nothing to run.

use std::fmt::Write;

/// `&`, `<`, `>`, `"` and `'` as entities: safe in text and in quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, main: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Outpost: {}</title>\n<link rel=\"stylesheet\" href=\"/assets/app.css\">\n\
         </head>\n<body>\n<main>\n<h1>Outpost</h1>\n{main}</main>\n</body>\n</html>\n",
        escape(title)
    )
}

fn problem(message: Option<&str>) -> String {
    message.map_or_else(String::new, |m| {
        format!("<p class=\"problem\" role=\"alert\">{}</p>\n", escape(m))
    })
}

/// The login form, with why the last attempt failed when it did.
pub fn login(message: Option<&str>) -> String {
    page(
        "log in",
        &format!(
            "{}<form method=\"post\" action=\"/login\">\n\
             <label>User name <input name=\"username\" autocomplete=\"username\" required></label>\n\
             <label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\n\
             <button type=\"submit\">Log in</button>\n</form>\n",
            problem(message)
        ),
    )
}

/// The setup form: the first administrator's name and password. The token rides in a
/// hidden field, so only the POST (never a link previewer's GET) uses it up.
pub fn setup(token: &str, message: Option<&str>) -> String {
    page(
        "first administrator",
        &format!(
            "<p>No administrator exists yet. Choose the first one's name and password \
             (at least {} characters).</p>\n{}<form method=\"post\" action=\"/setup\">\n\
             <input type=\"hidden\" name=\"token\" value=\"{}\">\n\
             <label>User name <input name=\"username\" autocomplete=\"username\" required></label>\n\
             <label>Password <input name=\"password\" type=\"password\" autocomplete=\"new-password\" required></label>\n\
             <label>Password again <input name=\"confirm\" type=\"password\" autocomplete=\"new-password\" required></label>\n\
             <button type=\"submit\">Create the administrator</button>\n</form>\n",
            accounts::MIN_PASSWORD_CHARS,
            problem(message),
            escape(token)
        ),
    )
}

/// What a used or void setup link shows.
pub fn setup_void() -> String {
    page(
        "setup link",
        "<p class=\"problem\" role=\"alert\">This setup link is not valid: it was used, or an \
         administrator exists already.</p>\n<p><a href=\"/login\">Log in</a></p>\n",
    )
}

/// The dashboard: the appliance's state at a glance, from the same [`api::Status`] that
/// `outpost status` prints. `csrf` goes into the logout form.
pub fn dashboard(status: &api::Status, user: &str, role: &str, csrf: &str) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "<div>Logged in as {} ({}). <form class=\"inline\" method=\"post\" action=\"/logout\">\
         <input type=\"hidden\" name=\"csrf_token\" value=\"{}\">\
         <button type=\"submit\">Log out</button></form></div>",
        escape(user),
        escape(role),
        escape(csrf)
    );
    // Alerts first: what needs a person is what a technician must see in five seconds.
    let mut alerts: Vec<(String, String)> = Vec::new();
    for a in &status.hardware.alerts {
        let severity = match a.severity {
            api::readings::Severity::Info => "info",
            api::readings::Severity::Warning => "warning",
            api::readings::Severity::Critical => "error",
        };
        alerts.push((severity.to_string(), a.message.clone()));
    }
    for a in &status.archive_alerts {
        alerts.push((a.severity.clone(), a.message.clone()));
    }
    for r in &status.repair_alerts {
        alerts.push(("error".into(), r.clone()));
    }
    if let Some(why) = &status.hardware.ingest_held {
        alerts.push(("error".into(), format!("new instances are refused: {why}")));
    }
    m.push_str("<section aria-labelledby=\"alerts\">\n<h2 id=\"alerts\">Alerts</h2>\n");
    if alerts.is_empty() {
        m.push_str("<p class=\"ok\">No alerts.</p>\n");
    } else {
        m.push_str("<ul>\n");
        for (severity, message) in &alerts {
            let _ = writeln!(
                m,
                "<li class=\"{0}\"><strong>{0}</strong>: {1}</li>",
                escape(severity),
                escape(message)
            );
        }
        m.push_str("</ul>\n");
    }
    m.push_str("</section>\n");

    m.push_str("<section aria-labelledby=\"archive\">\n<h2 id=\"archive\">Archive</h2>\n<dl>\n");
    let mut row = |k: &str, v: String| {
        let _ = writeln!(m, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(&v));
    };
    row(
        "Version",
        format!("{} on {} ({})", status.version, status.os, status.kernel),
    );
    row("Up for", api::show::age(status.uptime_s));
    row(
        "DICOM",
        format!("{} on {}", status.ae_title, status.listening.join(", ")),
    );
    row("Instances", status.instances.to_string());
    if let Some(u) = &status.usage {
        row(
            "Disk",
            format!(
                "{:.0}% used ({} of {}; {} in instances); evicts above {}%, down to {}%",
                u.percent(),
                api::show::bytes(u.used_bytes),
                api::show::bytes(u.capacity_bytes),
                api::show::bytes(u.stored_bytes),
                status.high_watermark,
                status.low_watermark
            ),
        );
    }
    row("Quarantined", status.quarantined.to_string());
    m.push_str("</dl>\n</section>\n");

    m.push_str("<section aria-labelledby=\"forwarding\">\n<h2 id=\"forwarding\">Forwarding</h2>\n");
    if status.destinations.is_empty() {
        m.push_str("<p>No destinations are configured.</p>\n");
    } else {
        m.push_str(
            "<div class=\"scroll\"><table>\n<thead><tr><th scope=\"col\">Destination</th>\
             <th scope=\"col\">State</th><th scope=\"col\">Waiting</th>\
             <th scope=\"col\">Oldest</th><th scope=\"col\">Dead letters</th>\
             <th scope=\"col\">Last error</th></tr></thead>\n<tbody>\n",
        );
        let now = status.started_at + status.uptime_s;
        for d in &status.destinations {
            let q = &d.queue;
            let mut state = d
                .live
                .as_ref()
                .map_or_else(|| "not running".to_string(), |l| l.state.clone());
            if q.paused {
                state.push_str(", paused");
            }
            if let Some(l) = &d.live {
                if l.outside_window {
                    state.push_str(", outside its window");
                }
                if l.held_on_battery {
                    state.push_str(", held on battery");
                }
            }
            let oldest = q.oldest_enqueued_at.map_or_else(
                || "-".to_string(),
                |t| api::show::age(now.saturating_sub(t)),
            );
            let last_error = d
                .live
                .as_ref()
                .and_then(|l| l.last_error.clone())
                .or_else(|| q.last_error.clone())
                .unwrap_or_default();
            let _ = writeln!(
                m,
                "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&q.destination),
                escape(&state),
                q.depth,
                escape(&oldest),
                q.dead,
                escape(&last_error)
            );
        }
        m.push_str("</tbody>\n</table></div>\n");
    }
    m.push_str("</section>\n");
    page("dashboard", &m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_what_can_break_out_of_text_or_an_attribute() {
        assert_eq!(
            escape(r#"<a href="x" onclick='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn a_setup_token_is_escaped_in_its_hidden_field() {
        let html = setup("\"><script>x</script>", Some("<b>"));
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;b&gt;"), "{html}");
    }
}
