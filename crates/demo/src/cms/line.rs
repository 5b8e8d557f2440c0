//! The line protocol's plumbing, shared by the switch and the CMS: a
//! bounded, cancel-safe line reader and a bounded line writer.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// The longest line accepted, newline excluded.
pub(crate) const MAX_LINE_BYTES: usize = 1024;

/// The longest `app/instance` accepted.
const MAX_WHO_BYTES: usize = 200;

/// Reads `\n`-terminated lines. [`LineReader::next_line`] is cancel-safe:
/// bytes of a line read so far stay in the reader when the future is
/// dropped (e.g. by a `select!`), so it can be used in a loop of `select!`.
pub(crate) struct LineReader<R> {
    inner: BufReader<R>,
    partial: Vec<u8>,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// A reader of lines from `inner`.
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner: BufReader::new(inner),
            partial: Vec::new(),
        }
    }

    /// The underlying stream (bytes read ahead are dropped).
    pub(crate) fn into_inner(self) -> R {
        self.inner.into_inner()
    }

    /// The next line without its `\n` (and `\r`), `None` at end of stream.
    /// A line longer than [`MAX_LINE_BYTES`], a stream ending in the middle
    /// of a line, or a line that is not UTF-8 is an error.
    pub(crate) async fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                if self.partial.is_empty() {
                    return Ok(None);
                }
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the stream ended in the middle of a line",
                ));
            }
            // Nothing below awaits: the bytes consumed are kept in `partial`.
            let (taken, complete) = match available.iter().position(|&b| b == b'\n') {
                Some(at) => (at + 1, true),
                None => (available.len(), false),
            };
            self.partial.extend_from_slice(&available[..taken]);
            self.inner.consume(taken);
            if self.partial.len() > MAX_LINE_BYTES + 2 {
                self.partial.clear();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a line is longer than {MAX_LINE_BYTES} bytes"),
                ));
            }
            if complete {
                let mut bytes = std::mem::take(&mut self.partial);
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
                return String::from_utf8(bytes).map(Some).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "a line is not UTF-8")
                });
            }
        }
    }
}

/// Writes `line` and a `\n`, giving up after `timeout` (a peer that does
/// not read must not hold the writer forever).
pub(crate) async fn write_line<W: AsyncWrite + Unpin>(
    writer: &mut W,
    line: &str,
    timeout: Duration,
) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    match tokio::time::timeout(timeout, writer.write_all(&bytes)).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("could not send a line within {} ms", timeout.as_millis()),
        )),
    }
}

/// Checks a client name `app/instance`: both parts non-empty, printable,
/// without spaces, at most 200 bytes in all.
pub(crate) fn check_who(who: &str) -> Result<(), String> {
    let valid = who.len() <= MAX_WHO_BYTES
        && who
            .split_once('/')
            .is_some_and(|(app, instance)| !app.is_empty() && !instance.is_empty())
        && who.matches('/').count() == 1
        && who.chars().all(|c| c.is_ascii_graphic());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a client name: expected app/instance (printable ASCII, no spaces, at most {MAX_WHO_BYTES} bytes)",
            shorten(who)
        ))
    }
}

/// `text` cut to 80 characters, for echoing peer input in errors.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_split_trimmed_and_bounded() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let input = format!("LINK cms/a\r\nALIVE\n{long}\n");
        let mut reader = LineReader::new(input.as_bytes());
        assert_eq!(reader.next_line().await.unwrap().unwrap(), "LINK cms/a");
        assert_eq!(reader.next_line().await.unwrap().unwrap(), "ALIVE");
        assert!(reader.next_line().await.is_err());
    }

    #[tokio::test]
    async fn a_partial_last_line_is_an_error_and_a_clean_end_is_none() {
        let mut reader = LineReader::new(&b"ALIVE\nAL"[..]);
        assert_eq!(reader.next_line().await.unwrap().unwrap(), "ALIVE");
        assert!(reader.next_line().await.is_err());
        let mut empty = LineReader::new(&b""[..]);
        assert!(empty.next_line().await.unwrap().is_none());
    }

    #[test]
    fn client_names_are_app_slash_instance() {
        assert!(check_who("cms/a").is_ok());
        for bad in ["", "cms", "/a", "cms/", "cms/a/b", "cms a/b", "cms/é"] {
            assert!(check_who(bad).is_err(), "{bad:?}");
        }
    }
}
