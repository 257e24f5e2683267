//! A minimal WebSocket client (RFC 6455) for CRI's streaming server, which serves Exec and
//! Attach over the Kubernetes channel protocol: every message starts with its stream
//! (0 stdin, 1 stdout, 2 stderr, 3 status, 4 resize).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Ws {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Ws {
    /// Opens `url` (`http://host:port/path`) with the `v4.channel.k8s.io` protocol.
    pub fn connect(url: &str) -> Ws {
        let rest = url
            .strip_prefix("http://")
            .expect("streaming URL is http://");
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let s = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut w = s.try_clone().unwrap();
        write!(
            w,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Origin: http://{host}\r\nSec-WebSocket-Key: Y292ZS1zdHJlYW0tdGVzdA==\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
        )
        .unwrap();
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(
            status.contains(" 101 "),
            "websocket upgrade refused: {status}"
        );
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Ws { r, w }
    }

    /// Sends `data` on `channel` (a masked binary frame, as clients must).
    pub fn send(&mut self, channel: u8, data: &[u8]) {
        let mut payload = vec![channel];
        payload.extend_from_slice(data);
        let mask = [0x5a, 0x17, 0xc3, 0x8e];
        let mut f = vec![0x82u8];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.w.write_all(&f).unwrap();
    }

    /// The next data message as (channel, bytes); None once the server closes.
    pub fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let mut h = [0u8; 2];
            self.r.read_exact(&mut h).ok()?;
            let op = h[0] & 0x0f;
            let mut len = (h[1] & 0x7f) as u64;
            if len == 126 {
                let mut b = [0u8; 2];
                self.r.read_exact(&mut b).ok()?;
                len = u16::from_be_bytes(b) as u64;
            } else if len == 127 {
                let mut b = [0u8; 8];
                self.r.read_exact(&mut b).ok()?;
                len = u64::from_be_bytes(b);
            }
            let mut data = vec![0u8; len as usize];
            self.r.read_exact(&mut data).ok()?;
            match op {
                0x8 => return None,
                0x1 | 0x2 if !data.is_empty() => {
                    return Some((data[0], data[1..].to_vec()));
                }
                _ => continue,
            }
        }
    }

    /// Reads until the server closes: (stdout, stderr, status message).
    pub fn collect(&mut self) -> (String, String, String) {
        let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Vec::new());
        while let Some((ch, data)) = self.recv() {
            match ch {
                1 => out.extend(data),
                2 => err.extend(data),
                3 => status.extend(data),
                _ => {}
            }
        }
        let s = |v: Vec<u8>| String::from_utf8_lossy(&v).into_owned();
        (s(out), s(err), s(status))
    }
}
