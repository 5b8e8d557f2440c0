//! The command hook: a minimal HTTP/1.1 client that posts a role to a
//! running demo app, without pulling an HTTP client library in.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on the whole exchange with the demo app.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the size of the answer read back.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// Tells the demo app listening on `127.0.0.1:{port}` to take `role` at
/// `epoch`, by `POST /tandem/role`. Fails with the app's own message when it
/// refuses (unknown role: 400, stale epoch: 409), or when it does not answer
/// within 5 s.
pub async fn set_role(port: u16, role: &str, epoch: u64) -> anyhow::Result<()> {
    let body = serde_json::json!({ "role": role, "epoch": epoch }).to_string();
    let request = format!(
        "POST /tandem/role HTTP/1.1\r\n\
         Host: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\
         \r\n\
         {body}",
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .with_context(|| format!("cannot connect to the demo app on 127.0.0.1:{port}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .context("cannot send the role hook")?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE_BYTES)
            .read_to_end(&mut response)
            .await
            .context("cannot read the demo app's answer")?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .with_context(|| {
            format!("the demo app on 127.0.0.1:{port} did not answer within {REQUEST_TIMEOUT:?}")
        })??;
    let response = String::from_utf8_lossy(&response);
    let (head, answer) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("the demo app on 127.0.0.1:{port} sent no HTTP status line"))?;
    if status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(answer)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| answer.trim().to_owned());
        bail!(
            "the demo app on 127.0.0.1:{port} refused role {role} (epoch {epoch}): HTTP {status}: {message}"
        );
    }
    Ok(())
}
