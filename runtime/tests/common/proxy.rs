//! A tiny HTTP/1.1 forwarding proxy in front of the test registry that records requests and can
//! cut one response short, to test resumable downloads. One request per connection (it forces
//! `Connection: close` upstream, so clients open a new connection per request).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy saw and what it should break.
#[derive(Default)]
pub struct ProxyState {
    /// Request heads seen, in order (request line and headers, lowercased header names).
    pub requests: Vec<String>,
    /// Cut the first response whose request line contains this, after this many bytes.
    pub cut: Option<(String, usize)>,
}

/// A running proxy on 127.0.0.1; aborted on drop.
pub struct Proxy {
    pub port: u16,
    pub state: Arc<Mutex<ProxyState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    /// Start forwarding to `upstream` (`127.0.0.1:port`).
    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let upstream = upstream.clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, st).await;
                });
            }
        });
        Proxy { port, state, task }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: &str,
    state: Arc<Mutex<ProxyState>>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let mut lines: Vec<String> = text
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .map(str::to_string)
        .collect();
    let request_line = lines[0].clone();
    lines.push("Connection: close".into());
    let forwarded = format!("{}\r\n\r\n", lines.join("\r\n"));
    let cut = {
        let mut st = state.lock().unwrap();
        st.requests.push(
            lines
                .iter()
                .map(|l| l.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join("\n"),
        );
        match &st.cut {
            Some((needle, after)) if request_line.contains(needle.as_str()) => {
                let after = *after;
                st.cut = None;
                Some(after)
            }
            _ => None,
        }
    };
    let mut up = TcpStream::connect(upstream).await?;
    up.write_all(forwarded.as_bytes()).await?;
    let mut sent = 0usize;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = up.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let n = match cut {
            Some(limit) if sent + n >= limit => {
                client.write_all(&buf[..limit - sent]).await?;
                // Drop the connection mid-body.
                return Ok(());
            }
            _ => n,
        };
        client.write_all(&buf[..n]).await?;
        sent += n;
    }
    Ok(())
}
