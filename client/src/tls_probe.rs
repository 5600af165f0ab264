//! Whether a plain-HTTP address is in fact a TLS server. Plaintext HTTP/2 sent to a TLS port
//! fails as a transport error: "h2 protocol error: frame with invalid size" (the server's TLS
//! alert record, `15 03 03 ...`, read as the header of an enormous HTTP/2 frame) or "connection
//! closed", by timing. After such a failure, one short probe of the port tells which it is, so the
//! error can say "use https://" instead.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::ClientError;

/// How long the probe may take to connect and to hear back.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The sentence to show instead of `err`, got calling `addr`, where `addr` is plain HTTP (`http://`
/// or bare `host:port`), `err` is a transport failure, and the server at `addr` answers
/// plaintext with a TLS record.
pub fn tls_hint(addr: &str, err: &ClientError) -> Option<String> {
    if addr.starts_with("https://") || !(err.is_transient() || err.to_string().contains("frame with invalid size")) {
        return None;
    }
    let plain = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let uri: tonic::codegen::http::Uri = plain.parse().ok()?;
    let (host, port) = (uri.host()?, uri.port_u16().unwrap_or(80));
    if !speaks_tls((host.trim_matches(['[', ']']), port))? {
        return None;
    }
    let authority = uri.authority()?.as_str();
    Some(format!(
        "{plain} is a TLS server: use https://{authority} (and its CA's certificate, where a private CA signed the server's)"
    ))
}

/// Sends the HTTP/2 client preface and reads the first bytes back: a TLS record header (alert
/// or handshake, version 3.x) means TLS. `None`: no answer to tell by.
fn speaks_tls(addr: impl ToSocketAddrs) -> Option<bool> {
    let target = addr.to_socket_addrs().ok()?.next()?;
    let mut stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").ok()?;
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).ok()?;
    Some(matches!(head, [0x15 | 0x16, 0x03]))
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A server that answers whatever comes with `reply`.
    fn answering(reply: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 24];
                let _ = s.read_exact(&mut buf);
                let _ = s.write_all(reply);
            }
        });
        addr.to_string()
    }

    fn frame_error() -> ClientError {
        ClientError::Rpc(tonic::Status::internal(
            "h2 protocol error: http2 error: connection error detected: frame with invalid size",
        ))
    }

    #[test]
    fn a_tls_alert_gets_the_https_hint() {
        // rustls' answer to plaintext: a fatal alert record (protocol_version).
        let addr = answering(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]);
        let hint = tls_hint(&format!("http://{addr}"), &frame_error()).expect("a TLS server");
        assert_eq!(
            hint,
            format!("http://{addr} is a TLS server: use https://{addr} (and its CA's certificate, where a private CA signed the server's)")
        );
        let bare = answering(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]);
        assert!(tls_hint(&bare, &frame_error()).unwrap().contains(&format!("use https://{bare}")));
    }

    #[test]
    fn other_answers_and_errors_get_none() {
        // An HTTP/2 server's SETTINGS frame: a plaintext server that failed otherwise.
        let h2 = answering(&[0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(tls_hint(&format!("http://{h2}"), &frame_error()), None);
        let tls = answering(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]);
        let other = ClientError::Rpc(tonic::Status::not_found("job job-x not found"));
        assert_eq!(tls_hint(&format!("http://{tls}"), &other), None);
        assert_eq!(tls_hint(&format!("https://{tls}"), &frame_error()), None);
    }
}
