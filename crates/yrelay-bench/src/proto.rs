//! The client side of y-protocols, as much as a load generator needs: frames out, frames in,
//! and a small WebSocket configuration that keeps thousands of clients cheap.

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;

/// A client connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// WebSocket settings for bench clients and the null relay: a 4 KiB read buffer instead of
/// tungstenite's 128 KiB, so 10,000 connections in one process stay small, and no message
/// size limit (a join storm receives a whole large document in one message).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(None)
        .max_frame_size(None)
}

/// Opens a WebSocket to `url`.
pub async fn connect(url: &str) -> anyhow::Result<Ws> {
    let (ws, _) =
        tokio_tungstenite::connect_async_with_config(url, Some(ws_config()), true).await?;
    Ok(ws)
}

/// What a server frame carries, as far as the bench cares.
pub enum ServerFrame {
    /// The server's state vector: answer with what we have that it lacks.
    SyncStep1(yrs::StateVector),
    /// The server's answer to our SyncStep1 (the document, or what we lack of it).
    SyncStep2(Vec<u8>),
    /// A live update.
    Update(Vec<u8>),
    /// Awareness (presence) update.
    Awareness,
    /// Anything else (auth, query awareness, custom types).
    Other,
}

/// Decodes one binary frame from the server.
pub fn decode(frame: &[u8]) -> anyhow::Result<ServerFrame> {
    Ok(match Message::decode_v1(frame)? {
        Message::Sync(SyncMessage::SyncStep1(sv)) => ServerFrame::SyncStep1(sv),
        Message::Sync(SyncMessage::SyncStep2(update)) => ServerFrame::SyncStep2(update),
        Message::Sync(SyncMessage::Update(update)) => ServerFrame::Update(update),
        Message::Awareness(_) => ServerFrame::Awareness,
        _ => ServerFrame::Other,
    })
}

/// Reads the message type and, for sync messages, the subtype, without decoding the payload:
/// a join storm only needs to know that the (large) SyncStep2 arrived and how big it is.
pub fn is_sync_step2(frame: &[u8]) -> bool {
    frame.first() == Some(&0) && frame.get(1) == Some(&1)
}

/// An awareness update frame for one client: `count=1, client, clock, state JSON`.
pub fn awareness_frame(client: u64, clock: u32, state_json: &str) -> Bytes {
    let mut payload = Vec::with_capacity(16 + state_json.len());
    write_var(&mut payload, 1);
    write_var(&mut payload, client);
    write_var(&mut payload, u64::from(clock));
    write_var(&mut payload, state_json.len() as u64);
    payload.extend_from_slice(state_json.as_bytes());
    yrelay_doc::codec::encode_awareness(&payload)
}

/// lib0 variable-length unsigned integer.
fn write_var(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awareness_frame_is_what_yrs_decodes() {
        let frame = awareness_frame(300, 7, r#"{"user":{"name":"b"}}"#);
        let Ok(Message::Awareness(update)) = Message::decode_v1(&frame) else {
            panic!("not an awareness message");
        };
        let (client, entry) = update.clients.iter().next().expect("one entry");
        assert_eq!(client.get(), 300);
        assert_eq!(entry.clock, 7);
        assert_eq!(&*entry.json, r#"{"user":{"name":"b"}}"#);
    }
}
