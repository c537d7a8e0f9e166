//! An offline-first "desktop app": a notes document kept in a local replica and synced with
//! a yrelay (or any y-websocket) server whenever it is reachable.
//!
//! ```sh
//! cargo run -p yrelay-client --example offline-desktop -- ws://127.0.0.1:1234 notes ./notes-replica "a line"
//! ```
//!
//! Each run appends its text (one line) to the Y.Text root `content`, persisted in the
//! replica before anything is sent, prints the document, and waits up to five seconds for the
//! server. With the server down the edit stays in the replica; the next run that reaches the
//! server exchanges everything missing, both ways, by state vector.

// An example prints its result.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use yrelay_client::{Client, ClientConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(server), Some(room), Some(replica)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: offline-desktop SERVER_URL ROOM REPLICA_DIR [TEXT]");
        std::process::exit(2);
    };
    let text = args.next();

    let client = Client::open(
        ClientConfig::new(room)
            .server(server)
            .replica(PathBuf::from(replica)),
    )
    .await?;
    eprintln!("from the replica: {:?}", client.text("content"));

    if let Some(text) = text {
        // Durable in the replica when this returns, online or not.
        client.append_text("content", &format!("{text}\n"))?;
    }

    match client.wait_synced(Duration::from_secs(5)).await {
        Ok(()) => {
            // Let the edit reach the server before closing.
            tokio::time::sleep(Duration::from_millis(300)).await;
            eprintln!("synced with the server");
        }
        Err(e) => eprintln!("offline ({e}); the edit waits in the replica for the next run"),
    }
    print!("{}", client.text("content"));
    client.close().await?;
    Ok(())
}
