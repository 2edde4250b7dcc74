//! A minimal HTTP/1.1 client over one keep-alive connection, for the benchmark and the tests on
//! loopback. It writes exactly the bytes it is given (so tests can send hostile requests) and
//! reads `Content-Length` and chunked responses. Not a general-purpose client.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// Bounds on what is read back, so that a broken server cannot make the client allocate without
/// limit.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// One connection.
#[derive(Debug)]
pub struct HttpClient {
    stream: BufReader<TcpStream>,
    host: String,
}

/// A response: status, headers (names lower-cased) and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn invalid(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

impl HttpClient {
    pub async fn connect(server: SocketAddr) -> std::io::Result<HttpClient> {
        let stream = TcpStream::connect(server).await?;
        Self::from_stream(stream, server)
    }

    /// Connects from a chosen local address, e.g. `127.0.0.2`, to look like another client.
    pub async fn connect_from(local: IpAddr, server: SocketAddr) -> std::io::Result<HttpClient> {
        let socket = match server {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(local, 0))?;
        let stream = socket.connect(server).await?;
        Self::from_stream(stream, server)
    }

    fn from_stream(stream: TcpStream, server: SocketAddr) -> std::io::Result<HttpClient> {
        stream.set_nodelay(true)?;
        Ok(HttpClient {
            stream: BufReader::new(stream),
            host: server.to_string(),
        })
    }

    /// Sends a request with a `Content-Length` body and reads the response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host);
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.write_raw(&bytes).await?;
        self.read_response().await
    }

    /// `POST` of `body` with a content type.
    pub async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        self.request("POST", path, &[("content-type", content_type)], body)
            .await
    }

    pub async fn get(&mut self, path: &str) -> std::io::Result<HttpResponse> {
        self.request("GET", path, &[], b"").await
    }

    /// Writes bytes as they are.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await
    }

    /// Reads one response.
    pub async fn read_response(&mut self) -> std::io::Result<HttpResponse> {
        let status_line = self.read_line().await?;
        let mut words = status_line.split_whitespace();
        let status = match (words.next(), words.next()) {
            (Some(version), Some(code)) if version.starts_with("HTTP/1.") => code
                .parse::<u16>()
                .map_err(|_| invalid(format!("bad status line {status_line:?}")))?,
            _ => return Err(invalid(format!("bad status line {status_line:?}"))),
        };
        let mut headers = Vec::new();
        let mut head_bytes = status_line.len();
        loop {
            let line = self.read_line().await?;
            head_bytes += line.len();
            if head_bytes > MAX_HEAD_BYTES {
                return Err(invalid("response head too large"));
            }
            if line.is_empty() {
                break;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let mut response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        if chunked {
            response.body = self.read_chunked().await?;
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length.parse().map_err(|_| invalid("bad content-length"))?;
            if length > MAX_BODY_BYTES {
                return Err(invalid("response body too large"));
            }
            response.body = vec![0; length];
            self.stream.read_exact(&mut response.body).await?;
        } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
            (&mut self.stream)
                .take(MAX_BODY_BYTES as u64)
                .read_to_end(&mut response.body)
                .await?;
        }
        Ok(response)
    }

    async fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        (&mut self.stream)
            .take(MAX_HEAD_BYTES as u64)
            .read_until(b'\n', &mut line)
            .await?;
        if line.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| invalid("response head is not UTF-8"))
    }

    async fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let size_line = self.read_line().await?;
            let size_text = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| invalid(format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_BODY_BYTES {
                return Err(invalid("response body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.stream.read_exact(&mut body[start..]).await?;
            self.read_line().await?;
        }
    }
}
