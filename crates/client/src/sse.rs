//! A small parser of `text/event-stream` (the subset tandem's API sends:
//! `id:`, `event:`, `data:` fields and `:` comments, lines ending in `\n`
//! or `\r\n`).

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseMessage {
    /// The `event:` field, if any (the default type is "message").
    pub(crate) event: Option<String>,
    /// The `id:` field, if any.
    pub(crate) id: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub(crate) data: String,
}

/// The longest line accepted; a longer one means the stream is not what we
/// expect.
pub(crate) const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Accumulates chunks and yields complete events.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    id: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Feeds a chunk; returns the events it completed, or an error if a
    /// line is too long or not UTF-8.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseMessage>, String> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                let line = String::from_utf8(line)
                    .map_err(|_| "the event stream is not valid UTF-8".to_owned())?;
                if let Some(message) = self.line_done(&line) {
                    out.push(message);
                }
            } else {
                if self.line.len() >= MAX_LINE_BYTES {
                    return Err(format!(
                        "an event stream line is longer than {MAX_LINE_BYTES} bytes"
                    ));
                }
                self.line.push(b);
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &str) -> Option<SseMessage> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            let id = self.id.take();
            return data.map(|mut data| {
                data.pop(); // the newline after the last data line
                SseMessage { event, id, data }
            });
        }
        if line.starts_with(':') {
            return None; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                let data = self.data.get_or_insert_with(String::new);
                data.push_str(value);
                data.push('\n');
            }
            "event" => self.event = Some(value.to_owned()),
            "id" => self.id = Some(value.to_owned()),
            _ => {} // "retry" and unknown fields are ignored
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_chunks_and_skips_comments() {
        let mut p = SseParser::default();
        let mut got = Vec::new();
        for chunk in [
            &b": keep-alive\n\nid: 7\nevent: ev"[..],
            b"ent\ndata: {\"a\":",
            b"1}\r\n\r\n",
            b"data: x\ndata: y\n\n",
        ] {
            got.extend(p.push(chunk).expect("valid"));
        }
        assert_eq!(
            got,
            vec![
                SseMessage {
                    event: Some("event".into()),
                    id: Some("7".into()),
                    data: "{\"a\":1}".into()
                },
                SseMessage {
                    event: None,
                    id: None,
                    data: "x\ny".into()
                },
            ]
        );
    }

    #[test]
    fn rejects_overlong_lines() {
        let mut p = SseParser::default();
        let big = vec![b'a'; MAX_LINE_BYTES + 1];
        assert!(p.push(&big).is_err());
    }
}
