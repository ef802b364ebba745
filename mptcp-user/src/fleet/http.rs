//! The exporter's HTTP/1.1 side, as small as Prometheus needs: one request per connection
//! (`Connection: close`), `GET`/`HEAD` of `/metrics` and `/`, everything else 404 or 405. A
//! client gets 5 seconds and 8 KiB to send its request head, so a slow or hostile one cannot
//! hold the exporter.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use super::exporter::Metrics;

const MAX_HEAD: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The request line's method and path, and the Accept header; `None` for a malformed head.
pub fn parse_head(head: &str) -> Option<(String, String, String)> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    first.next().filter(|v| v.starts_with("HTTP/1."))?;
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("accept"))
        .map_or(String::new(), |(_, v)| v.trim().to_string());
    Some((method, path, accept))
}

/// The response to a request head.
pub fn respond(head: &str, metrics: &Mutex<Metrics>) -> Vec<u8> {
    let (status, ctype, body, head_only) = match parse_head(head) {
        None => (
            "400 Bad Request",
            "text/plain",
            "bad request\n".to_string(),
            false,
        ),
        Some((m, _, _)) if m != "GET" && m != "HEAD" => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n".to_string(),
            false,
        ),
        Some((m, path, accept)) => {
            let path = path.split('?').next().unwrap_or("");
            match path {
                "/metrics" => {
                    let (body, ctype) = metrics
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .encode(&accept);
                    ("200 OK", ctype, body, m == "HEAD")
                }
                "/" => (
                    "200 OK",
                    "text/plain; charset=utf-8",
                    "mptcp-trace exporter: Prometheus metrics at /metrics\n".to_string(),
                    m == "HEAD",
                ),
                _ => (
                    "404 Not Found",
                    "text/plain",
                    "not found: try /metrics\n".to_string(),
                    false,
                ),
            }
        }
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Reads one request head from `s` and answers it.
pub async fn serve(mut s: TcpStream, metrics: Arc<Mutex<Metrics>>) {
    let mut buf = Vec::with_capacity(1024);
    let read = timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(true);
            }
            if buf.len() > MAX_HEAD {
                return Ok(true);
            }
        }
    })
    .await;
    if !matches!(read, Ok(Ok(true))) {
        return;
    }
    let head = String::from_utf8_lossy(&buf);
    let head = head.split("\r\n\r\n").next().unwrap_or("");
    let out = respond(head, &metrics);
    let _ = s.write_all(&out).await;
    let _ = s.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_and_answered_in_the_asked_format() {
        let m = Mutex::new(Metrics::new(1));
        let text = |r: Vec<u8>| String::from_utf8(r).unwrap();
        let r = text(respond(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*",
            &m,
        ));
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4"),
            "{r}"
        );
        assert!(r.contains("mptcp_trace_programs_attached 1"), "{r}");
        let r = text(respond(
            "GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0",
            &m,
        ));
        assert!(
            r.contains("Content-Type: application/openmetrics-text"),
            "{r}"
        );
        assert!(r.ends_with("# EOF\n"));
        let r = text(respond("GET / HTTP/1.0", &m));
        assert!(r.ends_with("Prometheus metrics at /metrics\n"), "{r}");
        assert!(text(respond("GET /nope HTTP/1.1", &m)).starts_with("HTTP/1.1 404"));
        assert!(text(respond("POST /metrics HTTP/1.1", &m)).starts_with("HTTP/1.1 405"));
        assert!(text(respond("garbage", &m)).starts_with("HTTP/1.1 400"));
        let r = text(respond("HEAD /metrics HTTP/1.1", &m));
        assert!(r.ends_with("\r\n\r\n"), "{r}");
    }
}
