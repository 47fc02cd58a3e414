//! /healthz, /readyz and /metrics over a minimal HTTP/1.1: one request per
//! connection, GET only. A scraper and a kubelet probe need no more, and a
//! hand-written server keeps the daemon's dependencies small.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::Metrics;

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    // A client that sends nothing must not hold a task forever.
                    let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, &metrics))
                        .await;
                });
            }
            Err(e) => {
                tracing::warn!("http accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub fn respond(method: &str, path: &str, metrics: &Metrics) -> (u16, &'static str, String) {
    let path = path.split('?').next().unwrap_or(path);
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", "only GET\n".into());
    }
    match path {
        "/healthz" if metrics.alive.load(Relaxed) => (200, "text/plain", "ok\n".into()),
        "/healthz" => (503, "text/plain", "reconcile loop stopped\n".into()),
        "/readyz" if !metrics.ready.load(Relaxed) => {
            (503, "text/plain", "first reconcile not finished\n".into())
        }
        // The plugin reads what it may do from the node state: a node whose state
        // cannot be written is not ready, however well its links are.
        "/readyz" if metrics.state_write_failing.load(Relaxed) => (
            503,
            "text/plain",
            "the node state could not be written (see the log)\n".into(),
        ),
        "/readyz" => (200, "text/plain", "ready\n".into()),
        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
        _ => (
            404,
            "text/plain",
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 8192 {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let (status, content_type, mut body) = respond(method, path, metrics);
    if status == 200 && path.split('?').next() == Some("/metrics") {
        body.push_str(&portsec_drops());
        body.push_str(&handover_metrics());
    }
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// The port-security drop counters by reason, read from the kernel at scrape
/// time (one small netlink dump; zeros before the first port is secured).
/// Left out, with a log line, when they cannot be read.
fn portsec_drops() -> String {
    match crate::portsec::counters() {
        Ok(counters) => counters.render_prometheus(),
        Err(e) => {
            tracing::warn!("metrics: {e}");
            String::new()
        }
    }
}

/// Migration targets still waiting for their guest's announcement, and the
/// frames they sent meanwhile, read from the kernel at scrape time. A long wait
/// is not an error: large VMs migrate for many minutes.
fn handover_metrics() -> String {
    let waiting = crate::portsec::awaiting_handover();
    let held = crate::portsec::held_frames();
    match (waiting, held) {
        (Ok(waiting), Ok(held)) => render_handover(waiting.len(), held),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("metrics: {e}");
            String::new()
        }
    }
}

fn render_handover(waiting: usize, held_frames: u64) -> String {
    let gauge = "portgroup_ports_awaiting_handover";
    let counter = "portgroup_handover_held_frames_total";
    format!(
        "# HELP {gauge} Ports of live-migration targets held until the guest announces itself.\n\
         # TYPE {gauge} gauge\n{gauge} {waiting}\n\
         # HELP {counter} Frames held ports sent before the guest's announcement (dropped).\n\
         # TYPE {counter} counter\n{counter} {held_frames}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let m = Metrics::default();
        assert_eq!(respond("GET", "/readyz", &m).0, 503);
        assert_eq!(respond("GET", "/healthz", &m).0, 503);
        m.alive.store(true, Relaxed);
        m.ready.store(true, Relaxed);
        assert_eq!(respond("GET", "/readyz", &m).0, 200);
        m.state_write_failing.store(true, Relaxed);
        assert_eq!(respond("GET", "/readyz", &m).0, 503);
        assert_eq!(respond("GET", "/healthz", &m).0, 200, "alive all the same");
        m.state_write_failing.store(false, Relaxed);
        assert_eq!(respond("GET", "/readyz", &m).0, 200);
        assert_eq!(respond("GET", "/healthz?verbose", &m).0, 200);
        assert_eq!(respond("POST", "/healthz", &m).0, 405);
        assert_eq!(respond("GET", "/nope", &m).0, 404);
        assert!(respond("GET", "/metrics", &m)
            .2
            .contains("portgroupd_reconciles_total"));
    }

    #[test]
    fn handover_series() {
        let text = render_handover(2, 17);
        assert!(
            text.contains("\nportgroup_ports_awaiting_handover 2\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE portgroup_ports_awaiting_handover gauge"));
        assert!(
            text.contains("\nportgroup_handover_held_frames_total 17\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 6);
    }
}
