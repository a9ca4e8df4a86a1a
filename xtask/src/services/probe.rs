//! Whether a service answers: Postgres' reply to an SSLRequest, Redis'
//! `+PONG`, or a bare TCP connect; and the percent-decoding of URL parts.

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Url;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{CONNECT_TIMEOUT, host_port};

/// A Postgres server answers an SSLRequest with one byte, `S` or `N`, before
/// any authentication: a check that needs no password and, unlike a bare
/// TCP connect, is not fooled by a proxy that accepts every connection.
pub(super) async fn postgres_answers(host: &str, port: u16) -> bool {
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let exchange = async {
        let mut stream = TcpStream::connect((host, port)).await.ok()?;
        stream.write_all(&SSL_REQUEST).await.ok()?;
        let mut reply = [0u8; 1];
        stream.read_exact(&mut reply).await.ok()?;
        Some(reply[0])
    };
    matches!(timeout(CONNECT_TIMEOUT, exchange).await, Ok(Some(b'S' | b'N')))
}

pub(super) async fn tcp_answers(host: &str, port: u16) -> bool {
    matches!(timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port))).await, Ok(Ok(_)))
}

/// `PING` over a plain socket (after `AUTH` when the URL has a password);
/// the answer must be `+PONG`.
pub(super) async fn redis_ping(url: &Url) -> Result<()> {
    let (host, port) = host_port(url, 6379).context("the URL names no host")?;
    let exchange = async {
        let stream =
            TcpStream::connect((host.as_str(), port)).await.with_context(|| format!("connecting to {host}:{port}"))?;
        let mut stream = BufReader::new(stream);
        if let Some(password) = url.password() {
            let password = percent_decode(password);
            let user = percent_decode(url.username());
            let mut auth = vec!["AUTH"];
            if !user.is_empty() {
                auth.push(&user);
            }
            auth.push(&password);
            let reply = redis_call(&mut stream, &auth).await?;
            if reply != "+OK" {
                bail!("AUTH answered `{reply}`");
            }
        }
        let reply = redis_call(&mut stream, &["PING"]).await?;
        if reply != "+PONG" {
            bail!("PING answered `{reply}`");
        }
        Ok(())
    };
    timeout(CONNECT_TIMEOUT, exchange).await.map_err(|_| anyhow!("no answer from {host}:{port} within 3 s"))?
}

/// Sends one command as a RESP array and reads the one-line reply.
pub(super) async fn redis_call(stream: &mut BufReader<TcpStream>, args: &[&str]) -> Result<String> {
    let mut message = format!("*{}\r\n", args.len());
    for arg in args {
        message.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.get_mut().write_all(message.as_bytes()).await.context("writing to Redis")?;
    let mut line = String::new();
    stream.read_line(&mut line).await.context("reading from Redis")?;
    Ok(line.trim_end().to_string())
}

pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => std::str::from_utf8(hex).ok().and_then(|h| u8::from_str_radix(h, 16).ok()),
            _ => None,
        };
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
