//! The null relay: the simplest WebSocket broadcast server there is, the physical-limit
//! baseline for fan-out. No CRDT, no protocol, no persistence: every binary message a
//! connection sends is queued, as the same `Bytes`, to every other connection on the same URL
//! path. A writer task per connection writes whatever is queued and flushes once per batch,
//! as yrelay does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

type Peers = Vec<(u64, mpsc::UnboundedSender<Bytes>)>;

#[derive(Default)]
struct Rooms {
    rooms: Mutex<HashMap<String, Peers>>,
}

impl Rooms {
    fn join(&self, room: &str, id: u64, tx: mpsc::UnboundedSender<Bytes>) {
        let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        rooms.entry(room.to_owned()).or_default().push((id, tx));
    }

    fn leave(&self, room: &str, id: u64) {
        let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(peers) = rooms.get_mut(room) {
            peers.retain(|(p, _)| *p != id);
            if peers.is_empty() {
                rooms.remove(room);
            }
        }
    }

    fn broadcast(&self, room: &str, from: u64, msg: &Bytes) {
        let rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(peers) = rooms.get(room) {
            for (id, tx) in peers {
                if *id != from {
                    let _ = tx.send(msg.clone());
                }
            }
        }
    }
}

/// Serves until the process ends. Prints `null relay listening on ADDR` once bound.
pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    crate::say(&format!(
        "null relay listening on {}",
        listener.local_addr()?
    ));
    serve_on(listener).await
}

/// Serves connections accepted from `listener` until the task is dropped.
pub async fn serve_on(listener: TcpListener) -> anyhow::Result<()> {
    let rooms = Arc::new(Rooms::default());
    let mut next_id = 0u64;
    loop {
        let (stream, _) = listener.accept().await?;
        next_id += 1;
        tokio::spawn(connection(stream, next_id, Arc::clone(&rooms)));
    }
}

// The handshake callback's signature is tungstenite's; its error type is large by design.
#[allow(clippy::result_large_err)]
async fn connection(stream: TcpStream, id: u64, rooms: Arc<Rooms>) {
    let _ = stream.set_nodelay(true);
    let mut path = String::new();
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(
        stream,
        callback,
        Some(crate::proto::ws_config()),
    )
    .await
    else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    rooms.join(&path, id, tx);
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(Message::Binary(first)).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if sink.feed(Message::Binary(more)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(msg) = source.next().await {
        match msg {
            Ok(Message::Binary(b)) => rooms.broadcast(&path, id, &b),
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    rooms.leave(&path, id);
    writer.abort();
}
