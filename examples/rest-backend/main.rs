//! A backend service that patches a document over yrelay's REST API, without a WebSocket:
//! reads the state, appends a line to a Y.Text root and posts only that edit (acknowledged
//! once durable), then prints the document as JSON.
//!
//! ```sh
//! cargo run -p yrelay-client --example rest-backend -- http://127.0.0.1:1234 my-room "deployed v1.2"
//! # with auth on: YRELAY_TOKEN=<editor token> cargo run ...
//! ```

// An example prints its result.
#![allow(clippy::print_stdout)]

use std::sync::{Arc, Mutex};

use yrelay_client::{Endpoint, RestClient};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Text, Transact, Update};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(server), Some(room), Some(line)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: rest-backend SERVER_URL ROOM LINE");
        std::process::exit(2);
    };
    let rest = RestClient::new(
        &Endpoint::parse(&server)?,
        std::env::var("YRELAY_TOKEN").ok(),
        None,
    )?;

    // The current state, into a local Doc.
    let state = rest.state(&room, None).await?;
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&state)?)?;

    // Capture exactly the update our edit makes, and send only that.
    let made = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&made);
    doc.observe_update_v1("backend", move |_, e| {
        if let Ok(mut out) = sink.lock() {
            out.push(e.update.clone());
        }
    })?;
    let log = doc.get_or_insert_text("content");
    {
        let mut txn = doc.transact_mut();
        let end = log.len(&txn);
        log.insert(&mut txn, end, &format!("{line}\n"));
    }
    let updates = std::mem::take(&mut *made.lock().map_err(|_| "poisoned")?);
    for update in updates {
        rest.post_update(&room, &update).await?;
    }

    println!(
        "{}",
        serde_json::to_string_pretty(&rest.json(&room).await?)?
    );
    Ok(())
}
