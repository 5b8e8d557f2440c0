//! Placeholders in commands and environment values: `{app}`, `{instance}`,
//! `{host}`, `{site}` (the host's), `{address}`, `{ports.NAME}`; `{{` and `}}` stand for literal
//! braces. The model keeps them unexpanded; the agent expands them per instance.

use super::model::{App, FenceDevice, Host, Instance};

/// The placeholders a template may use, for messages.
pub(crate) const PLACEHOLDERS: &str = "{app}, {instance}, {host}, {site}, {address}, {ports.NAME}";

/// The placeholders a fence command may use, for messages.
pub(crate) const FENCE_PLACEHOLDERS: &str = "{host}, {address}, {site}";

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token<'a> {
    /// Text copied as is.
    Text(&'a str),
    /// A placeholder; `start..end` are the byte offsets of its braces in the template.
    Placeholder {
        name: &'a str,
        start: usize,
        end: usize,
    },
    /// A `{` with no closing `}`, at byte `start`; the rest of the template is `rest`.
    Unclosed { start: usize, rest: &'a str },
}

/// What a placeholder name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placeholder<'a> {
    App,
    Instance,
    Host,
    Site,
    Address,
    Port(&'a str),
    Unknown,
}

impl<'a> Placeholder<'a> {
    /// Classifies the text between the braces.
    pub(crate) fn of(name: &'a str) -> Self {
        match name {
            "app" => Placeholder::App,
            "instance" => Placeholder::Instance,
            "host" => Placeholder::Host,
            "site" => Placeholder::Site,
            "address" => Placeholder::Address,
            _ => match name.strip_prefix("ports.") {
                Some(port) if !port.is_empty() => Placeholder::Port(port),
                _ => Placeholder::Unknown,
            },
        }
    }
}

/// Splits a template into text and placeholders.
pub(crate) fn tokens(template: &str) -> Vec<Token<'_>> {
    let bytes = template.as_bytes();
    let mut out = Vec::new();
    let mut text_start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'}' if bytes.get(i + 1) == Some(&bytes[i]) => {
                // `{{` or `}}`: a literal brace.
                push_text(&mut out, &template[text_start..=i]);
                i += 2;
                text_start = i;
            }
            b'{' => {
                push_text(&mut out, &template[text_start..i]);
                match template[i + 1..].find('}') {
                    Some(len) => {
                        let end = i + 1 + len + 1;
                        out.push(Token::Placeholder {
                            name: &template[i + 1..end - 1],
                            start: i,
                            end,
                        });
                        i = end;
                        text_start = i;
                    }
                    None => {
                        out.push(Token::Unclosed {
                            start: i,
                            rest: &template[i..],
                        });
                        return out;
                    }
                }
            }
            _ => i += 1,
        }
    }
    push_text(&mut out, &template[text_start..]);
    out
}

fn push_text<'a>(out: &mut Vec<Token<'a>>, text: &'a str) {
    if !text.is_empty() {
        out.push(Token::Text(text));
    }
}

/// Expands the placeholders of `template` for `instance` of `app` on `host`.
/// `{{` and `}}` become `{` and `}`; a placeholder that cannot be resolved
/// (validation rules this out) is left as written.
pub fn expand(template: &str, app: &App, instance: &Instance, host: &Host) -> String {
    let mut out = String::with_capacity(template.len());
    for token in tokens(template) {
        match token {
            Token::Text(t) => out.push_str(t),
            Token::Unclosed { rest, .. } => out.push_str(rest),
            Token::Placeholder { name, start, end } => match Placeholder::of(name) {
                Placeholder::App => out.push_str(&app.name),
                Placeholder::Instance => out.push_str(&instance.id),
                Placeholder::Host => out.push_str(&host.name),
                Placeholder::Site => out.push_str(&host.site),
                Placeholder::Address => out.push_str(&host.address.to_string()),
                Placeholder::Port(port) => match instance.port(port) {
                    Some(number) => out.push_str(&number.to_string()),
                    None => out.push_str(&template[start..end]),
                },
                Placeholder::Unknown => out.push_str(&template[start..end]),
            },
        }
    }
    out
}

/// Expands the placeholders of a fence command's `template` for `host`:
/// `{host}`, `{address}` and `{site}`. Anything else (validation rules it
/// out) is left as written.
fn expand_fence(template: &str, host: &Host) -> String {
    let mut out = String::with_capacity(template.len());
    for token in tokens(template) {
        match token {
            Token::Text(t) => out.push_str(t),
            Token::Unclosed { rest, .. } => out.push_str(rest),
            Token::Placeholder { name, start, end } => match name {
                "host" => out.push_str(&host.name),
                "address" => out.push_str(&host.address.to_string()),
                "site" => out.push_str(&host.site),
                _ => out.push_str(&template[start..end]),
            },
        }
    }
    out
}

/// The command of fence device `device` for `host`, its `{host}`,
/// `{address}` and `{site}` replaced.
pub fn fence_command(device: &FenceDevice, host: &Host) -> Vec<String> {
    device
        .command
        .iter()
        .map(|a| expand_fence(a, host))
        .collect()
}

/// Expands every template of `templates` (a command) with [`expand`].
pub fn expand_all(
    templates: &[String],
    app: &App,
    instance: &Instance,
    host: &Host,
) -> Vec<String> {
    templates
        .iter()
        .map(|t| expand(t, app, instance, host))
        .collect()
}
